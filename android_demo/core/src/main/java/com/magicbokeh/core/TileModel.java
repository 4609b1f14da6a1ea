package com.magicbokeh.core;

/**
 * The model, one tile at a time: encoder -> denoiser -> decoder, float32 NCHW arrays in and out
 * (batch 1). Shapes, for tile T, latent tile t and C latent channels: encode (1,3,T,T) -> (1,C,t,t);
 * denoise (latent, defocus (1,1,T,T), in-focus (1,1,T,T)) -> (1,C,t,t); decode (1,C,t,t) -> (1,3,T,T).
 * The app implements it over ExecuTorch (android_demo/jni); tests replay a golden's recording.
 */
public interface TileModel extends AutoCloseable {
    float[] encode(float[] rgb);

    float[] denoise(float[] latent, float[] defocus, float[] inFocus);

    float[] decode(float[] x0);

    /** What made the tiles, for the output's metadata (e.g. the manifest's model label). */
    String label();

    @Override
    default void close() {
    }
}
