package com.magicbokeh.core;

import java.util.Arrays;

/**
 * A {@link TileModel} that plays back a golden's recorded per-tile component outputs, and checks
 * that every input it is fed equals (bit for bit) what the reference fed its components for that
 * tile. It proves the app's tiling, extraction, maps and feeding order without running a model.
 */
public final class ReplayTileModel implements TileModel {
    private final Golden golden;
    private int tile = 0;
    private float[] lastLatent;
    private float[] lastX0;

    public ReplayTileModel(Golden golden) {
        this.golden = golden;
    }

    /** How many tiles were fully played back (decoded). */
    public int tilesPlayed() {
        return tile;
    }

    private void expectTile(String stage) {
        if (tile >= golden.tileArrays.size()) {
            throw new BokehException("the " + stage + " was called for tile " + tile + " but the golden recorded only "
                    + golden.tileArrays.size() + " tiles");
        }
    }

    @Override
    public float[] encode(float[] rgb) {
        expectTile("encoder");
        requireEqual("encoder input (rgb)", rgb, golden.floats(golden.tileArray(tile, "rgb")));
        lastLatent = golden.floats(golden.tileArray(tile, "latent"));
        return lastLatent.clone();
    }

    @Override
    public float[] denoise(float[] latent, float[] defocus, float[] inFocus) {
        expectTile("denoiser");
        requireEqual("denoiser input (latent)", latent, lastLatent);
        requireEqual("denoiser input (defocus)", defocus, golden.floats(golden.tileArray(tile, "defocus")));
        requireEqual("denoiser input (in_focus)", inFocus, golden.floats(golden.tileArray(tile, "in_focus")));
        lastX0 = golden.floats(golden.tileArray(tile, "x0"));
        return lastX0.clone();
    }

    @Override
    public float[] decode(float[] x0) {
        expectTile("decoder");
        requireEqual("decoder input (x0)", x0, lastX0);
        float[] out = golden.floats(golden.tileArray(tile, "decoded"));
        tile++;
        return out;
    }

    @Override
    public String label() {
        return "replay of " + golden.folder;
    }

    private void requireEqual(String what, float[] actual, float[] expected) {
        if (expected == null || actual.length != expected.length) {
            throw new BokehException("tile " + tile + ": " + what + " has " + actual.length + " values, the golden "
                    + (expected == null ? "has no previous stage" : "recorded " + expected.length));
        }
        if (Arrays.equals(actual, expected)) return;
        for (int i = 0; i < actual.length; i++) {
            if (Float.floatToRawIntBits(actual[i]) != Float.floatToRawIntBits(expected[i])) {
                throw new BokehException("tile " + tile + ": " + what + " differs from the golden at flat index " + i
                        + ": " + actual[i] + " vs " + expected[i]);
            }
        }
    }
}
