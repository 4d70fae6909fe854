package streamscore.flink;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ObjectArrayTypeInfo;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Groups the rows of {@link KafkaRecordDeserializer} into one row per partition and micro-batch,
 * {@code (partition INT, offsets BIGINT[], values BYTES[])}, so the Python pipeline is called once
 * per micro-batch, not once per record.
 *
 * <p>A partition's batch leaves when it holds {@code maxEvents} records, when {@code maxDelayMs}
 * has passed (a processing-time timer), and always before a checkpoint barrier
 * ({@link #prepareSnapshotPreBarrier}): nothing is held across a checkpoint, so the operator needs
 * no state and the source's checkpointed offsets cover exactly the records emitted before the
 * barrier. Chained to the source (same parallelism, forward), it sees each partition in offset
 * order and keeps it.
 */
public final class RecordBatcher extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;

    private final int maxEvents;
    private final long maxDelayMs;
    private transient Map<Integer, Pending> pending;

    public RecordBatcher(int maxEvents, long maxDelayMs) {
        if (maxEvents < 1 || maxDelayMs < 1) {
            throw new IllegalArgumentException("maxEvents and maxDelayMs must be positive");
        }
        this.maxEvents = maxEvents;
        this.maxDelayMs = maxDelayMs;
    }

    /** The row type this operator emits. */
    public static TypeInformation<Row> rowType() {
        return Types.ROW_NAMED(new String[] {"partition", "offsets", "values"},
                Types.INT, PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO,
                ObjectArrayTypeInfo.getInfoFor(byte[][].class, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
    }

    @Override
    public void open() throws Exception {
        super.open();
        pending = new LinkedHashMap<>();
        scheduleFlush();
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        int partition = (Integer) row.getField(0);
        Pending batch = pending.computeIfAbsent(partition, p -> new Pending());
        batch.offsets.add((Long) row.getField(1));
        batch.values.add((byte[]) row.getField(2));
        if (batch.offsets.size() >= maxEvents) {
            emit(partition, pending.remove(partition));
        }
    }

    @Override
    public void onProcessingTime(long time) {
        flushAll();
        scheduleFlush();
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        flushAll();
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        super.finish();
    }

    private void scheduleFlush() {
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + maxDelayMs, this);
    }

    private void flushAll() {
        for (Map.Entry<Integer, Pending> entry : pending.entrySet()) {
            emit(entry.getKey(), entry.getValue());
        }
        pending.clear();
    }

    private void emit(int partition, Pending batch) {
        long[] offsets = new long[batch.offsets.size()];
        for (int i = 0; i < offsets.length; i++) {
            offsets[i] = batch.offsets.get(i);
        }
        output.collect(new StreamRecord<>(Row.of(partition, offsets, batch.values.toArray(new byte[0][]))));
    }

    private static final class Pending {
        final List<Long> offsets = new ArrayList<>();
        final List<byte[]> values = new ArrayList<>();
    }
}
