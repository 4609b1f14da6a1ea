package com.magicbokeh.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The app's benchmark result, in the per-device layout benchmarks/devices.py merges
 * ({@code {"devices": {device: {component: {"latency_ms", "peak_memory_bytes", ...}}}}}, the shape
 * of {@code hub.json}): save it as {@code hub.json} in a folder and pass that folder to
 * {@code benchmarks/run.py --hub-results}. Latency is the median over the timed runs; every run's
 * time is kept beside it.
 */
public final class BenchmarkReport {
    public static final String SCHEMA = "magicbokeh-app-benchmark";
    public static final String FILE_NAME = "hub.json";

    private final String device;
    private final Map<String, Object> context;
    private final Map<String, Object> components = new LinkedHashMap<>();

    /**
     * {@code device} names the phone and runtime (e.g. "Pixel 8 (ExecuTorch XNNPACK, app)");
     * {@code context} records what was measured (artifacts, manifest sha256, threads, warm-up runs).
     */
    public BenchmarkReport(String device, Map<String, Object> context) {
        this.device = device;
        this.context = new LinkedHashMap<>(context);
    }

    /** Record one component's timed runs (milliseconds each) and its peak memory (null: not measured). */
    public void add(String component, double[] runsMs, Long peakMemoryBytes) {
        if (runsMs.length == 0) throw new IllegalArgumentException("component " + component + ": no timed runs");
        double[] sorted = runsMs.clone();
        Arrays.sort(sorted);
        double median = sorted.length % 2 == 1 ? sorted[sorted.length / 2]
                : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("latency_ms", median);
        row.put("peak_memory_bytes", peakMemoryBytes);
        row.put("compute_unit_counts", null);
        List<Object> runs = new ArrayList<>();
        for (double r : runsMs) runs.add(r);
        row.put("runs_ms", runs);
        row.put("min_ms", sorted[0]);
        row.put("max_ms", sorted[sorted.length - 1]);
        components.put(component, row);
    }

    public Map<String, Object> toJson() {
        Map<String, Object> root = new LinkedHashMap<>();
        root.put("schema", SCHEMA);
        root.put("context", context);
        Map<String, Object> devices = new LinkedHashMap<>();
        devices.put(device, components);
        root.put("devices", devices);
        return root;
    }

    public String toJsonText() {
        return Json.write(toJson());
    }
}
