package com.magicbokeh.core;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The whole-image pipeline of runtime_py/pipeline.py around a {@link TileModel}: depth to 8 bits,
 * focus, per-tile defocus and in-focus maps, tiles in plan order, float32 blending, 8-bit output,
 * colour fix. Memory: the photo, its 8-bit depth, one tile's inputs and outputs, and the blend
 * accumulators (3 + 1 floats per padded pixel); nothing grows with the number of tiles.
 *
 * <p>Images with a side smaller than one tile are reflect-padded at the bottom / right (numpy's
 * "reflect") and the output cropped back; focus and colour statistics use the unpadded image.
 */
public final class BokehPipeline {
    private final ModelConfig config;

    public BokehPipeline(ModelConfig config) {
        this.config = config;
    }

    public ModelConfig config() {
        return config;
    }

    /** Check everything about the inputs that can be checked without running the model. */
    public void checkInputs(RgbImage image, DepthMap depth, Focus focus, int k) {
        depth.checkMatches(image);
        focus.check(image.width, image.height);
        PixelMath.checkAperture(k);
    }

    public RenderResult render(RgbImage image, DepthMap depth, Focus focus, int k, TileModel model,
                               RenderListener listener) {
        long totalStart = System.nanoTime();
        checkInputs(image, depth, focus, k);
        int width = image.width, height = image.height;
        byte[] depthU8 = depth.toU8();
        float f = focus.value(depthU8, width, height);

        int tile = config.tile;
        int padRows = Math.max(0, tile - height), padCols = Math.max(0, tile - width);
        TilePlan plan = new TilePlan(height + padRows, width + padCols, tile, config.stride);
        Blending blending = new Blending(3, plan.height, plan.width);
        int plane = tile * tile;
        float[] rgb = new float[3 * plane];
        float[] defocus = new float[plane];
        float[] inFocus = new float[plane];
        int latentLength = config.latentChannels * config.latentTile * config.latentTile;
        double encoder = 0, denoiser = 0, decoder = 0;
        long tilesStart = System.nanoTime();
        int done = 0;
        for (TilePlan.Box box : plan.boxes) {
            if (listener.isCancelled()) throw new CancelledException(done, plan.count());
            for (int r = 0; r < tile; r++) {
                int y = PixelMath.reflect(box.top + r, height);
                for (int c = 0; c < tile; c++) {
                    int x = PixelMath.reflect(box.left + c, width);
                    int src = y * width + x;
                    int dst = r * tile + c;
                    for (int ch = 0; ch < 3; ch++) rgb[ch * plane + dst] = PixelMath.toModelRange(image.pixels[src * 3 + ch] & 0xFF);
                    float d = PixelMath.defocus(depthU8[src] & 0xFF, f, k);
                    defocus[dst] = d;
                    inFocus[dst] = PixelMath.inFocus(d, config.inFocusThreshold);
                }
            }
            long t0 = System.nanoTime();
            float[] latent = checked("encoder", model.encode(rgb), latentLength, box);
            long t1 = System.nanoTime();
            float[] x0 = checked("denoiser", model.denoise(latent, defocus, inFocus), latentLength, box);
            long t2 = System.nanoTime();
            float[] decoded = checked("decoder", model.decode(x0), 3 * plane, box);
            long t3 = System.nanoTime();
            encoder += (t1 - t0) / 1e9;
            denoiser += (t2 - t1) / 1e9;
            decoder += (t3 - t2) / 1e9;
            blending.add(box, decoded, Blending.weights(box, plan.height, plan.width, plan.stride));
            listener.onTileDone(++done, plan.count(), box);
        }
        float[] blended = blending.finish();
        double tiles = (System.nanoTime() - tilesStart) / 1e9;

        long fixStart = System.nanoTime();
        RgbImage raw = cropToU8(blended, plan, width, height);
        PixelMath.ChannelStats outputStats = PixelMath.ChannelStats.of(raw);
        PixelMath.ChannelStats inputStats = PixelMath.ChannelStats.of(image);
        RgbImage fixed = PixelMath.colourFix(raw, outputStats, inputStats);
        Map<String, Double> seconds = new LinkedHashMap<>();
        seconds.put("encoder", encoder);
        seconds.put("denoiser", denoiser);
        seconds.put("decoder", decoder);
        seconds.put("tiles", tiles);
        seconds.put("colour_fix", (System.nanoTime() - fixStart) / 1e9);
        seconds.put("total", (System.nanoTime() - totalStart) / 1e9);
        return new RenderResult(fixed, raw, depthU8, f, plan, padRows, padCols, blended, outputStats, inputStats, seconds);
    }

    private static float[] checked(String stage, float[] out, int expected, TilePlan.Box box) {
        if (out == null || out.length != expected) {
            throw new BokehException("the " + stage + " returned " + (out == null ? "nothing" : out.length + " values")
                    + " for " + box + ", expected " + expected);
        }
        return out;
    }

    /** The top-left H x W of the blended (3, Hp, Wp) image as 8-bit HWC. */
    static RgbImage cropToU8(float[] blended, TilePlan plan, int width, int height) {
        byte[] out = new byte[width * height * 3];
        int plane = plan.height * plan.width;
        for (int y = 0; y < height; y++) {
            for (int x = 0; x < width; x++) {
                for (int ch = 0; ch < 3; ch++) {
                    out[(y * width + x) * 3 + ch] = (byte) PixelMath.toU8(blended[ch * plane + y * plan.width + x]);
                }
            }
        }
        return new RgbImage(width, height, out);
    }

    /** The whole padded defocus and in-focus maps (H_p, W_p), for display or checks; render computes them per tile. */
    public static float[][] defocusMaps(byte[] depthU8, int width, int height, int padRows, int padCols, float focus,
                                        int k, float threshold) {
        int pw = width + padCols, ph = height + padRows;
        float[] d = new float[pw * ph];
        float[] m = new float[pw * ph];
        for (int r = 0; r < ph; r++) {
            for (int c = 0; c < pw; c++) {
                int v = depthU8[PixelMath.reflect(r, height) * width + PixelMath.reflect(c, width)] & 0xFF;
                d[r * pw + c] = PixelMath.defocus(v, focus, k);
                m[r * pw + c] = PixelMath.inFocus(d[r * pw + c], threshold);
            }
        }
        return new float[][] {d, m};
    }
}
