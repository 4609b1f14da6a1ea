package com.magicbokeh.core;

import java.util.List;
import java.util.Map;

/**
 * The model constants an app needs to cut, feed and blend tiles: read from the manifest's
 * {@code model.config} (or a golden's {@code config}).
 */
public final class ModelConfig {
    public final String name;
    public final int tile;
    public final int stride;
    public final int latentChannels;
    public final int latentTile;
    /** {@code m = 1 - [D > threshold]}, compared in float32 as torch does. */
    public final float inFocusThreshold;

    public ModelConfig(String name, int tile, int stride, int latentChannels, int latentTile, float inFocusThreshold) {
        if (tile <= 0 || stride <= 0 || stride > tile) {
            throw new ManifestException("config " + name + ": tile " + tile + " / stride " + stride
                    + " is not a valid tiling (need 0 < stride <= tile)");
        }
        if (latentChannels <= 0 || latentTile <= 0 || tile % latentTile != 0) {
            throw new ManifestException("config " + name + ": latent " + latentChannels + " x " + latentTile
                    + " does not fit a " + tile + "-px tile");
        }
        this.name = name;
        this.tile = tile;
        this.stride = stride;
        this.latentChannels = latentChannels;
        this.latentTile = latentTile;
        this.inFocusThreshold = inFocusThreshold;
    }

    /** From a manifest's {@code model.config} (the Python {@code MagicBokehConfig.to_dict()}). */
    public static ModelConfig fromManifestConfig(Map<String, Object> config) {
        String where = "manifest model.config";
        try {
            int tile = Math.toIntExact(Json.integer(Json.require(config, "tile", where), where + ".tile"));
            List<Object> vae = Json.array(Json.require(config, "vae_block_out_channels", where),
                    where + ".vae_block_out_channels");
            int factor = 1 << (vae.size() - 1);
            return new ModelConfig(
                    Json.string(Json.require(config, "name", where), where + ".name"),
                    tile,
                    Math.toIntExact(Json.integer(Json.require(config, "stride", where), where + ".stride")),
                    Math.toIntExact(Json.integer(Json.require(config, "latent_channels", where), where + ".latent_channels")),
                    tile / factor,
                    (float) Json.number(Json.require(config, "defocus_in_focus_threshold", where),
                            where + ".defocus_in_focus_threshold"));
        } catch (IllegalArgumentException | ArithmeticException ex) {
            throw new ManifestException(ex.getMessage());
        }
    }

    /** From a golden's {@code config} object. */
    public static ModelConfig fromGoldenConfig(Map<String, Object> config) {
        String where = "golden config";
        return new ModelConfig(
                Json.string(Json.require(config, "name", where), where + ".name"),
                Math.toIntExact(Json.integer(Json.require(config, "tile", where), where + ".tile")),
                Math.toIntExact(Json.integer(Json.require(config, "stride", where), where + ".stride")),
                Math.toIntExact(Json.integer(Json.require(config, "latent_channels", where), where + ".latent_channels")),
                Math.toIntExact(Json.integer(Json.require(config, "latent_tile", where), where + ".latent_tile")),
                (float) Json.number(Json.require(config, "defocus_in_focus_threshold", where),
                        where + ".defocus_in_focus_threshold"));
    }

    @Override
    public String toString() {
        return name + " (tile " + tile + ", stride " + stride + ", latent " + latentChannels + "x" + latentTile + ")";
    }
}
