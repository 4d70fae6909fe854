package streamscore.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The official Flink {@code KafkaSource}'s records as rows {@code (partition INT, offset BIGINT,
 * value BYTES)}: the raw bytes and their coordinates, nothing decoded (decoding, and dead-lettering
 * what does not decode, is the Python pipeline's job). A tombstone's value is null.
 */
public final class KafkaRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    /** The row type of {@link #deserialize}. */
    public static TypeInformation<Row> rowType() {
        return Types.ROW_NAMED(new String[] {"partition", "offset", "value"},
                Types.INT, Types.LONG, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        out.collect(Row.of(record.partition(), record.offset(), record.value()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return rowType();
    }
}
