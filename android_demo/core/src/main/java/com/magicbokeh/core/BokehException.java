package com.magicbokeh.core;

/** Base of every error core raises on purpose; the message is one line that says what to fix. */
public class BokehException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public BokehException(String message) {
        super(message);
    }

    public BokehException(String message, Throwable cause) {
        super(message, cause);
    }
}
