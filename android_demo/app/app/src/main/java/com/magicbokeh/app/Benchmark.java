package com.magicbokeh.app;

import android.os.Build;
import android.os.Debug;
import com.magicbokeh.core.BenchmarkReport;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.jni.ComponentBenchmark;
import java.io.File;
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Benchmark mode: times each tile component over N runs (after one warm-up; the loop is
 * {@link ComponentBenchmark}, shared with the host CLI) and writes {@code hub.json} in the
 * per-device layout benchmarks/devices.py merges. Start it with
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
        context.put("soc", Build.VERSION.SDK_INT >= 31 ? Build.SOC_MODEL : Build.HARDWARE);
        context.put("android_sdk", Build.VERSION.SDK_INT);
        // Peak native heap: the runtime's arenas and weights (mmapped programs are not counted).
        BenchmarkReport report = ComponentBenchmark.run(manifest, runs, device, context,
                Debug::getNativeHeapAllocatedSize);
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
