package com.magicbokeh.jni;

/**
 * Loads the JNI runner once: {@code libmagicbokeh_jni.so} from the app's native libraries, or, on
 * a host, the file named by the system property {@code magicbokeh.jni.library}.
 */
final class NativeLibrary {
    private static boolean loaded;

    private NativeLibrary() {
    }

    static synchronized void load() {
        if (loaded) return;
        String path = System.getProperty("magicbokeh.jni.library");
        try {
            if (path != null) System.load(path);
            else System.loadLibrary("magicbokeh_jni");
        } catch (UnsatisfiedLinkError ex) {
            throw new ExecuTorchException("cannot load the JNI runner " + (path != null ? path : "libmagicbokeh_jni.so")
                    + ": " + ex.getMessage());
        }
        loaded = true;
    }
}
