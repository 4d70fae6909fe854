package streamscore.flink;

import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.flink.types.Row;

/**
 * Turns a row {@code (topic STRING, key BYTES, value BYTES, headers MAP<STRING, BYTES>)} into a
 * Kafka record: any of key, value and headers may be null. Headers are written in name order.
 * The partition is left to the producer's partitioner (murmur2 of the key).
 */
public final class KafkaRowSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row row, KafkaSinkContext context, Long timestamp) {
        Object topic = row.getField(0);
        if (!(topic instanceof String) || ((String) topic).isEmpty()) {
            throw new IllegalArgumentException("a Kafka record row needs a topic in field 0, got " + topic);
        }
        RecordHeaders headers = new RecordHeaders();
        Object fields = row.getField(3);
        if (fields != null) {
            @SuppressWarnings("unchecked")
            Map<String, byte[]> byName = new TreeMap<>((Map<String, byte[]>) fields);
            for (Map.Entry<String, byte[]> header : byName.entrySet()) {
                headers.add(header.getKey(), header.getValue());
            }
        }
        return new ProducerRecord<>((String) topic, null, timestamp, (byte[]) row.getField(1),
                                    (byte[]) row.getField(2), headers);
    }
}
