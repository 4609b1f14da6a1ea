package com.magicbokeh.core;

/** A photo, depth map, focus mask, focus point or K is unusable. */
public class InputException extends BokehException {
    private static final long serialVersionUID = 1L;

    public InputException(String message) {
        super(message);
    }
}
