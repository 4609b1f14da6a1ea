package com.magicbokeh.jni;

import java.io.FileNotFoundException;
import java.util.Arrays;

/**
 * One ExecuTorch program ({@code .pte}) loaded through the C++ Module API (jni/src/main/cpp). Not
 * thread-safe: one render thread calls it. Missing files raise {@link FileNotFoundException}, load
 * failures {@link ExecuTorchException}, inputs of the wrong shape {@link IllegalArgumentException}.
 */
public final class ExecuTorchComponent implements AutoCloseable {
    private final String name;
    private long handle;
    private final int[][] inputShapes;

    private ExecuTorchComponent(String name, long handle) {
        this.name = name;
        this.handle = handle;
        this.inputShapes = nativeInputShapes(handle);
    }

    /** Load {@code path}'s forward method; {@code name} labels errors (encoder, denoiser, ...). */
    public static ExecuTorchComponent load(String path, String name) throws FileNotFoundException {
        NativeLibrary.load();
        return new ExecuTorchComponent(name, nativeLoad(path, name));
    }

    public String name() {
        return name;
    }

    /** The input shapes the program itself declares. */
    public int[][] inputShapes() {
        int[][] copy = new int[inputShapes.length][];
        for (int i = 0; i < copy.length; i++) copy[i] = inputShapes[i].clone();
        return copy;
    }

    /** Run on inputs of the program's own shapes; returns the first output, flattened (C order). */
    public float[] run(float[]... inputs) {
        if (inputs.length != inputShapes.length) {
            throw new IllegalArgumentException("component '" + name + "' takes " + inputShapes.length + " inputs, got "
                    + inputs.length);
        }
        return run(inputs, inputShapes);
    }

    /** Run with explicit shapes (checked against the program's by the runner). */
    public synchronized float[] run(float[][] inputs, int[][] shapes) {
        if (handle == 0) throw new IllegalStateException("component '" + name + "' was closed");
        return nativeRun(handle, inputs, shapes);
    }

    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeClose(handle);
            handle = 0;
        }
    }

    @Override
    public String toString() {
        return "ExecuTorchComponent(" + name + ", inputs " + Arrays.deepToString(inputShapes) + ")";
    }

    private static native long nativeLoad(String path, String name) throws FileNotFoundException;

    private static native int[][] nativeInputShapes(long handle);

    private static native float[] nativeRun(long handle, float[][] inputs, int[][] shapes);

    private static native void nativeClose(long handle);
}
