package com.magicbokeh.host;

import com.magicbokeh.core.BenchmarkReport;
import com.magicbokeh.core.BokehException;
import com.magicbokeh.core.BokehPipeline;
import com.magicbokeh.core.DepthMap;
import com.magicbokeh.core.Focus;
import com.magicbokeh.core.InputException;
import com.magicbokeh.core.Json;
import com.magicbokeh.core.Manifest;
import com.magicbokeh.core.RenderResult;
import com.magicbokeh.core.RgbImage;
import com.magicbokeh.jni.ComponentBenchmark;
import com.magicbokeh.jni.ExecuTorchException;
import com.magicbokeh.jni.ExecuTorchTileModel;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The app's render path on a desktop JVM: core's pipeline over the JNI ExecuTorch runner, with
 * files instead of the camera (see render.sh). User errors are one line on stderr, exit code 2.
 */
public final class HostRender {
    static final String USAGE = String.join("\n",
            "usage: render.sh --artifacts DIR --image I --depth D.npy (--mask M.png | --focus-point X,Y) [--K K] --out O.png",
            "       render.sh --artifacts DIR --benchmark N --out hub.json [--device NAME]",
            "",
            "Renders a photo through the Android demo's own code (android_demo/core + the JNI ExecuTorch runner)",
            "and writes O.png (model label in a magicbokeh:model text chunk) and O.json (settings and timings).",
            "",
            "  --artifacts DIR     ExecuTorch XNNPACK artifacts folder (manifest.json + .pte files)",
            "  --image I           photo, 8-bit PNG or JPEG",
            "  --depth D.npy       depth map (H, W) float32/float64 in [0, 1], larger = nearer",
            "  --mask M.png        focus on the median depth under the mask's non-zero pixels",
            "  --focus-point X,Y   focus on the depth at column X, row Y (a tap)",
            "  --K K               aperture strength, integer 1..32 (default 32)",
            "  --out O             output PNG (render) or benchmark JSON (--benchmark)",
            "  --benchmark N       time each tile component over N runs (after one warm-up) instead of rendering",
            "  --device NAME       device name recorded in the benchmark JSON (default: this host's OS and CPU)");

    private HostRender() {
    }

    public static void main(String[] args) {
        try {
            System.exit(run(args));
        } catch (BokehException | ExecuTorchException | IllegalArgumentException | FileNotFoundException ex) {
            System.err.println("error: " + ex.getMessage());
            System.exit(2);
        } catch (IOException ex) {
            System.err.println("error: " + ex);
            System.exit(2);
        }
    }

    static int run(String[] args) throws IOException {
        Map<String, String> opts = new LinkedHashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                System.out.println(USAGE);
                return 0;
            }
            if (!a.startsWith("--") || i + 1 >= args.length) {
                throw new IllegalArgumentException("unexpected argument '" + a + "'\n" + USAGE.lines().findFirst().get());
            }
            opts.put(a.substring(2), args[++i]);
        }
        for (String key : opts.keySet()) {
            if (!java.util.List.of("artifacts", "image", "depth", "mask", "focus-point", "K", "out", "benchmark", "device")
                    .contains(key)) {
                throw new IllegalArgumentException("unknown option --" + key + " (see --help)");
            }
        }
        Path artifacts = Paths.get(required(opts, "artifacts"));
        Path out = Paths.get(required(opts, "out"));
        if (opts.containsKey("benchmark")) return benchmark(artifacts, Integer.parseInt(opts.get("benchmark")), out,
                opts.getOrDefault("device", System.getProperty("os.name") + " " + System.getProperty("os.arch") + " (host JVM, JNI ExecuTorch XNNPACK)"));

        long start = System.nanoTime();
        RgbImage image = Images.readPhoto(Paths.get(required(opts, "image")));
        DepthMap depth = Npy.readDepth(Paths.get(required(opts, "depth")));
        Focus focus;
        if (opts.containsKey("mask") == opts.containsKey("focus-point")) {
            throw new InputException("give exactly one of --mask and --focus-point");
        }
        if (opts.containsKey("mask")) {
            int[] size = new int[2];
            byte[] mask = Images.readMask(Paths.get(opts.get("mask")), size);
            focus = Focus.mask(mask, size[0], size[1]);
        } else {
            String[] xy = opts.get("focus-point").split(",");
            if (xy.length != 2) throw new InputException("focus point must be 'X,Y' (two integers), got '" + opts.get("focus-point") + "'");
            try {
                focus = Focus.point(Integer.parseInt(xy[0].trim()), Integer.parseInt(xy[1].trim()));
            } catch (NumberFormatException ex) {
                throw new InputException("focus point must be 'X,Y' (two integers), got '" + opts.get("focus-point") + "'");
            }
        }
        int k;
        try {
            k = Integer.parseInt(opts.getOrDefault("K", "32"));
        } catch (NumberFormatException ex) {
            throw new InputException("K must be an integer in 1..32, got '" + opts.get("K") + "'");
        }
        double readSeconds = (System.nanoTime() - start) / 1e9;

        long loadStart = System.nanoTime();
        Manifest manifest = Manifest.read(artifacts, true);
        BokehPipeline pipeline = new BokehPipeline(manifest.config);
        pipeline.checkInputs(image, depth, focus, k);  // before loading any model
        RenderResult result;
        double loadSeconds;
        try (ExecuTorchTileModel model = ExecuTorchTileModel.load(manifest)) {
            loadSeconds = (System.nanoTime() - loadStart) / 1e9;
            result = pipeline.render(image, depth, focus, k, model, (done, tiles, box) ->
                    System.err.printf("tile %d/%d (%s)%n", done, tiles, box.kind));
        }
        Map<String, String> text = new LinkedHashMap<>();
        text.put("magicbokeh:model", manifest.modelLabel);
        Images.writePng(result.image, out, text);

        Map<String, Object> sidecar = new LinkedHashMap<>();
        sidecar.put("tool", "android_demo host renderer (core + JNI ExecuTorch runner)");
        sidecar.put("model", manifest.modelLabel);
        sidecar.put("artifacts", artifacts.toAbsolutePath().toString());
        sidecar.put("manifest_sha256", manifest.manifestSha256);
        sidecar.put("config", manifest.config.name);
        sidecar.put("image", Map.of("height", image.height, "width", image.width));
        sidecar.put("K", k);
        sidecar.put("focus", focus.describe());
        sidecar.put("focus_value", (double) result.focus);
        sidecar.put("tiles", result.plan.count());
        sidecar.put("padding", java.util.List.of(result.padRows, result.padCols));
        Map<String, Object> seconds = new LinkedHashMap<>();
        seconds.put("read_inputs", readSeconds);
        seconds.put("load", loadSeconds);
        seconds.putAll(result.seconds);
        sidecar.put("seconds", seconds);
        sidecar.put("seconds_per_tile", result.seconds.get("tiles") / result.plan.count());
        Images.writeText(sidecarPath(out), Json.write(sidecar));
        System.err.printf("wrote %s (%d tiles, %.2f s per tile)%n", out, result.plan.count(),
                result.seconds.get("tiles") / result.plan.count());
        return 0;
    }

    static Path sidecarPath(Path png) {
        String name = png.getFileName().toString();
        int dot = name.lastIndexOf('.');
        return png.resolveSibling((dot > 0 ? name.substring(0, dot) : name) + ".json");
    }

    private static String required(Map<String, String> opts, String key) {
        String value = opts.get(key);
        if (value == null) throw new IllegalArgumentException("--" + key + " is required (see --help)");
        return value;
    }

    /** Time encoder, denoiser and decoder as the app's benchmark mode does ({@link ComponentBenchmark}). */
    static int benchmark(Path artifacts, int runs, Path out, String device) throws IOException {
        if (runs < 1) throw new IllegalArgumentException("--benchmark needs at least 1 run, got " + runs);
        Manifest manifest = Manifest.read(artifacts, true);
        Map<String, Object> context = new LinkedHashMap<>();
        context.put("artifacts", artifacts.toAbsolutePath().toString());
        BenchmarkReport report = ComponentBenchmark.run(manifest, runs, device, context, null);
        Images.writeText(out, report.toJsonText());
        System.err.println("wrote " + out);
        return 0;
    }
}
