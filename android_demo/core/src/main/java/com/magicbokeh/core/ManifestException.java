package com.magicbokeh.core;

/** An artifacts folder is missing, corrupt, of another schema, or lacks a component. */
public class ManifestException extends BokehException {
    private static final long serialVersionUID = 1L;

    public ManifestException(String message) {
        super(message);
    }
}
