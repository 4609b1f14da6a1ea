package com.magicbokeh.core;

/** Progress of a render, called on the rendering thread after each tile (post to the UI yourself). */
public interface RenderListener {
    void onTileDone(int tilesDone, int tiles, TilePlan.Box box);

    /** Return true to stop the render before the next tile ({@link CancelledException}). */
    default boolean isCancelled() {
        return false;
    }

    RenderListener NONE = (done, tiles, box) -> { };
}
