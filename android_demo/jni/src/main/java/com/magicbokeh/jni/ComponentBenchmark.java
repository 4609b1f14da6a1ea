package com.magicbokeh.jni;

import com.magicbokeh.core.BenchmarkReport;
import com.magicbokeh.core.Manifest;
import java.io.FileNotFoundException;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.LongSupplier;

/**
 * The one benchmark the app's benchmark mode and the host CLI ({@code render.sh --benchmark}) both run:
 * each tile component of an ExecuTorch artifacts folder timed on its own, on constant inputs of the
 * program's own shapes, {@code runs} times after {@link #WARMUP_RUNS} warm-up run. Keeping it in one
 * place keeps the phone's and the host's {@code hub.json} figures comparable.
 */
public final class ComponentBenchmark {
    /** The tile components, in pipeline order. */
    public static final String[] COMPONENTS = {"encoder", "denoiser", "decoder"};
    public static final int WARMUP_RUNS = 1;

    private ComponentBenchmark() {
    }

    /**
     * Time every tile component of {@code manifest}'s artifacts.
     *
     * @param device      the device name the report is filed under
     * @param extraContext what the caller adds to the report's context (artifacts path, SoC, SDK level)
     * @param memoryProbe bytes in use, read after the warm-up and after every timed run; the largest
     *                    reading is the component's peak. {@code null}: memory is not measured.
     */
    public static BenchmarkReport run(Manifest manifest, int runs, String device, Map<String, Object> extraContext,
                                      LongSupplier memoryProbe) throws FileNotFoundException {
        if (runs < 1) throw new IllegalArgumentException("the benchmark needs at least 1 timed run, got " + runs);
        Map<String, Object> context = new LinkedHashMap<>(extraContext);
        context.put("manifest_sha256", manifest.manifestSha256);
        context.put("model", manifest.modelLabel);
        context.put("runs", runs);
        context.put("warmup_runs", WARMUP_RUNS);
        BenchmarkReport report = new BenchmarkReport(device, context);
        try (ExecuTorchTileModel model = ExecuTorchTileModel.load(manifest)) {
            for (String name : COMPONENTS) {
                ExecuTorchComponent component = model.component(name);
                int[][] shapes = component.inputShapes();
                float[][] inputs = constantInputs(shapes);
                for (int w = 0; w < WARMUP_RUNS; w++) component.run(inputs, shapes);
                Long peak = memoryProbe == null ? null : memoryProbe.getAsLong();
                double[] times = new double[runs];
                for (int r = 0; r < runs; r++) {
                    long t0 = System.nanoTime();
                    component.run(inputs, shapes);
                    times[r] = (System.nanoTime() - t0) / 1e6;
                    if (memoryProbe != null) peak = Math.max(peak, memoryProbe.getAsLong());
                }
                report.add(name, times, peak);
            }
        }
        return report;
    }

    /** 0.25 everywhere, except the denoiser's third input, a 0/1 in-focus mask, which is all ones. */
    static float[][] constantInputs(int[][] shapes) {
        float[][] inputs = new float[shapes.length][];
        for (int i = 0; i < shapes.length; i++) {
            int n = 1;
            for (int d : shapes[i]) n *= d;
            inputs[i] = new float[n];
            Arrays.fill(inputs[i], i == 2 ? 1f : 0.25f);
        }
        return inputs;
    }
}
