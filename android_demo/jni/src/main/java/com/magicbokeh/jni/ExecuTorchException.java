package com.magicbokeh.jni;

/** An ExecuTorch program could not be loaded or run; the message names the component and the reason. */
public class ExecuTorchException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public ExecuTorchException(String message) {
        super(message);
    }
}
