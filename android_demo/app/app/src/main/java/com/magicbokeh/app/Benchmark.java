package com.magicbokeh.app;

import android.os.Build;
import android.os.Debug;
import com.magicbokeh.core.BenchmarkReport;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.jni.ExecuTorchComponent;
import com.magicbokeh.jni.ExecuTorchTileModel;
import java.io.File;
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Benchmark mode: times each tile component over N runs (after one warm-up) and writes
 * {@code hub.json} in the per-device layout benchmarks/devices.py merges. Start it with
 * {@code adb shell am start -n com.magicbokeh.app/.MainActivity --ei benchmark 20}, then
 * {@code adb pull /sdcard/Android/data/com.magicbokeh.app/files/benchmark/hub.json} and pass that
 * folder to {@code benchmarks/run.py --hub-results}.
 */
final class Benchmark {
    private Benchmark() {
    }

    static File run(Manifest manifest, int runs, File outDir) throws Exception {
        String device = Build.MANUFACTURER + " " + Build.MODEL + " (ExecuTorch " + manifest.precision + ", app)";
        Map<String, Object> context = new LinkedHashMap<>();
        context.put("manifest_sha256", manifest.manifestSha256);
        context.put("model", manifest.modelLabel);
        context.put("soc", Build.VERSION.SDK_INT >= 31 ? Build.SOC_MODEL : Build.HARDWARE);
        context.put("android_sdk", Build.VERSION.SDK_INT);
        context.put("runs", runs);
        context.put("warmup_runs", 1);
        BenchmarkReport report = new BenchmarkReport(device, context);
        try (ExecuTorchTileModel model = ExecuTorchTileModel.load(manifest)) {
            for (String name : new String[] {"encoder", "denoiser", "decoder"}) {
                ExecuTorchComponent component = model.component(name);
                int[][] shapes = component.inputShapes();
                float[][] inputs = new float[shapes.length][];
                for (int i = 0; i < shapes.length; i++) {
                    int n = 1;
                    for (int d : shapes[i]) n *= d;
                    inputs[i] = new float[n];
                    Arrays.fill(inputs[i], i == 2 ? 1f : 0.25f);
                }
                component.run(inputs, shapes);
                long peak = Debug.getNativeHeapAllocatedSize();
                double[] times = new double[runs];
                for (int r = 0; r < runs; r++) {
                    long t0 = System.nanoTime();
                    component.run(inputs, shapes);
                    times[r] = (System.nanoTime() - t0) / 1e6;
                    peak = Math.max(peak, Debug.getNativeHeapAllocatedSize());
                }
                // Native heap after the runs: the runtime's arenas and weights (mmapped programs are not counted).
                report.add(name, times, peak);
            }
        }
        File out = new File(outDir, BenchmarkReport.FILE_NAME);
        outDir.mkdirs();
        File tmp = new File(outDir, BenchmarkReport.FILE_NAME + ".tmp");
        try (FileOutputStream stream = new FileOutputStream(tmp)) {
            stream.write(report.toJsonText().getBytes(StandardCharsets.UTF_8));
        }
        if (!tmp.renameTo(out)) throw new IllegalStateException("cannot write " + out);
        return out;
    }
}
