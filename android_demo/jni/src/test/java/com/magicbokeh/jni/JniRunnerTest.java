package com.magicbokeh.jni;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.magicbokeh.core.Golden;
import com.magicbokeh.core.Manifest;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The JNI ExecuTorch runner on the built-in model's XNNPACK fp32 artifacts ({@code -Dmagicbokeh.artifacts})
 * and the default-model golden, whose tile outputs the Python ExecuTorch runtime recorded from the
 * same artifacts.
 */
class JniRunnerTest {
    @TempDir
    Path tmp;

    static Manifest manifest() {
        String dir = System.getProperty("magicbokeh.artifacts");
        if (dir == null) fail("-Dmagicbokeh.artifacts=DIR is not set: run through tests/android_demo (pytest)");
        return Manifest.read(Paths.get(dir), true);
    }

    static Path golden(String name) {
        return Paths.get(System.getProperty("magicbokeh.goldens"), name);
    }

    /**
     * Same .pte, same kernels and delegate as the Python runtime: the outputs should agree to float32
     * round-off. 1e-5 of the output's range allows for a different XNNPACK thread split, and is 1000x
     * below what a wrong input layout or a missed operator would give.
     */
    static void assertClose(String what, float[] expected, float[] actual) {
        assertEquals(expected.length, actual.length, what + " length");
        float range = 0, worst = 0;
        for (int i = 0; i < expected.length; i++) {
            range = Math.max(range, Math.abs(expected[i]));
            worst = Math.max(worst, Math.abs(expected[i] - actual[i]));
        }
        assertTrue(worst <= 1e-5f * Math.max(range, 1e-6f), what + ": max abs difference " + worst + " (range " + range + ")");
    }

    @Test
    void tileModelReproducesThePythonExecuTorchOutputsOfTheGolden() throws IOException {
        Golden g = Golden.read(golden("default_mask"));
        Manifest m = manifest();
        assertEquals(m.manifestSha256, g.index.get("model") instanceof java.util.Map
                ? ((java.util.Map<?, ?>) g.index.get("model")).get("manifest_sha256") : null,
                "the golden must come from these artifacts");
        try (ExecuTorchTileModel model = ExecuTorchTileModel.load(m)) {
            for (int i = 0; i < Math.min(2, g.boxes.size()); i++) {
                float[] latent = model.encode(g.floats(g.tileArray(i, "rgb")));
                assertClose("tile " + i + " encoder", g.floats(g.tileArray(i, "latent")), latent);
                float[] x0 = model.denoise(g.floats(g.tileArray(i, "latent")), g.floats(g.tileArray(i, "defocus")),
                        g.floats(g.tileArray(i, "in_focus")));
                assertClose("tile " + i + " denoiser", g.floats(g.tileArray(i, "x0")), x0);
                float[] decoded = model.decode(g.floats(g.tileArray(i, "x0")));
                assertClose("tile " + i + " decoder", g.floats(g.tileArray(i, "decoded")), decoded);
            }
        }
    }

    @Test
    void programInputShapesEqualTheManifest() throws IOException {
        Manifest m = manifest();
        try (ExecuTorchComponent encoder = ExecuTorchComponent.load(m.component("encoder").path.toString(), "encoder")) {
            assertArrayEquals(m.component("encoder").inputs.get(0).shape, encoder.inputShapes()[0]);
        }
    }

    @Test
    void missingProgramFileIsAFileNotFoundException() {
        String path = tmp.resolve("nothing.pte").toString();
        FileNotFoundException ex = assertThrows(FileNotFoundException.class, () -> ExecuTorchComponent.load(path, "encoder"));
        assertTrue(ex.getMessage().contains("'encoder'") && ex.getMessage().contains(path), ex.getMessage());
    }

    @Test
    void corruptProgramIsALoadFailure() throws IOException {
        Path bad = tmp.resolve("bad.pte");
        Files.write(bad, new byte[4096]);
        ExecuTorchException ex = assertThrows(ExecuTorchException.class, () -> ExecuTorchComponent.load(bad.toString(), "decoder"));
        assertTrue(ex.getMessage().contains("cannot load"), ex.getMessage());
    }

    @Test
    void inputOfTheWrongShapeIsAnIllegalArgument() throws IOException {
        Manifest m = manifest();
        try (ExecuTorchComponent encoder = ExecuTorchComponent.load(m.component("encoder").path.toString(), "encoder")) {
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                    () -> encoder.run(new float[][] {new float[3 * 64 * 64]}, new int[][] {{1, 3, 64, 64}}));
            assertTrue(ex.getMessage().contains("has shape [1, 3, 64, 64]"), ex.getMessage());
            IllegalArgumentException count = assertThrows(IllegalArgumentException.class,
                    () -> encoder.run(new float[10]));
            assertTrue(count.getMessage().contains("needs"), count.getMessage());
        }
    }

    @Test
    void closedComponentRefusesToRun() throws IOException {
        Manifest m = manifest();
        ExecuTorchComponent decoder = ExecuTorchComponent.load(m.component("decoder").path.toString(), "decoder");
        decoder.close();
        assertThrows(IllegalStateException.class, () -> decoder.run(new float[1]));
    }

    /**
     * The benchmark both the app and the host CLI run: every component timed {@code runs} times after
     * one warm-up, the memory probe read after the warm-up and after each timed run (the app passes the
     * native heap size; here a counter, so the peak must be its last reading).
     */
    @Test
    @SuppressWarnings("unchecked")
    void componentBenchmarkTimesEveryComponentAndReadsTheProbe() throws IOException {
        long[] readings = {0};
        int runs = 2;
        java.util.Map<String, Object> context = new java.util.LinkedHashMap<>();
        context.put("artifacts", "here");
        java.util.Map<String, Object> json = ComponentBenchmark.run(manifest(), runs, "test device", context,
                () -> ++readings[0]).toJson();
        assertEquals(3L * (1 + runs), readings[0], "one reading after the warm-up and one per timed run");
        java.util.Map<String, Object> ctx = (java.util.Map<String, Object>) json.get("context");
        assertEquals("here", ctx.get("artifacts"));
        assertEquals(runs, ctx.get("runs"));
        assertEquals(ComponentBenchmark.WARMUP_RUNS, ctx.get("warmup_runs"));
        java.util.Map<String, java.util.Map<String, Object>> rows = (java.util.Map<String, java.util.Map<String, Object>>)
                ((java.util.Map<String, Object>) json.get("devices")).get("test device");
        assertEquals(java.util.List.of(ComponentBenchmark.COMPONENTS), new java.util.ArrayList<>(rows.keySet()));
        long last = 0;
        for (String name : ComponentBenchmark.COMPONENTS) {
            java.util.Map<String, Object> row = rows.get(name);
            last += 1 + runs;
            assertEquals(last, row.get("peak_memory_bytes"), name + ": peak is the largest reading");
            assertEquals(runs, ((java.util.List<?>) row.get("runs_ms")).size(), name);
            assertTrue((double) row.get("latency_ms") > 0, name);
        }
        assertThrows(IllegalArgumentException.class, () -> ComponentBenchmark.run(manifest(), 0, "d", context, null));
    }
}
