package com.magicbokeh.core;

import java.util.Map;

/** A render's output photo and the intermediates an app may show or a test may check. */
public final class RenderResult {
    /** The output photo, after the colour fix: what the app shows and saves. */
    public final RgbImage image;
    /** The blended model output before the colour fix. */
    public final RgbImage raw;
    public final byte[] depthU8;
    public final float focus;
    public final TilePlan plan;
    /** Rows / columns added at the bottom / right (reflect) for sides smaller than one tile. */
    public final int padRows;
    public final int padCols;
    /** The blended (3, Hp, Wp) float32 image in [-1, 1] (the accumulator, divided in place). */
    public final float[] blended;
    public final PixelMath.ChannelStats outputStats;
    public final PixelMath.ChannelStats inputStats;
    /** Seconds per stage: encoder, denoiser, decoder (summed over tiles), tiles, colour_fix, total. */
    public final Map<String, Double> seconds;

    RenderResult(RgbImage image, RgbImage raw, byte[] depthU8, float focus, TilePlan plan, int padRows, int padCols,
                 float[] blended, PixelMath.ChannelStats outputStats, PixelMath.ChannelStats inputStats,
                 Map<String, Double> seconds) {
        this.image = image;
        this.raw = raw;
        this.depthU8 = depthU8;
        this.focus = focus;
        this.plan = plan;
        this.padRows = padRows;
        this.padCols = padCols;
        this.blended = blended;
        this.outputStats = outputStats;
        this.inputStats = inputStats;
        this.seconds = seconds;
    }
}
