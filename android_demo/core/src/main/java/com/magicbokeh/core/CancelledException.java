package com.magicbokeh.core;

/** A render was cancelled between tiles (the user pressed cancel). */
public class CancelledException extends BokehException {
    private static final long serialVersionUID = 1L;

    public CancelledException(int tilesDone, int tiles) {
        super("render cancelled after " + tilesDone + " of " + tiles + " tiles");
    }
}
