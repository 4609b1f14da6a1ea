package com.magicbokeh.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * The tiles of one (padded) image in the published run order: the regular grid row-major, then
 * the tiles flush with the bottom edge (left to right), those flush with the right edge (top to
 * bottom), and the bottom-right corner; the last three only when the grid stops short of that edge.
 */
public final class TilePlan {
    /** One tile: top-left corner, size, position in the run order and kind. */
    public static final class Box {
        public final int index;
        public final int top;
        public final int left;
        public final int size;
        /** "grid", "bottom", "right" or "corner". */
        public final String kind;

        public Box(int index, int top, int left, int size, String kind) {
            this.index = index;
            this.top = top;
            this.left = left;
            this.size = size;
            this.kind = kind;
        }

        @Override
        public String toString() {
            return "tile " + index + " (" + kind + " at top=" + top + ", left=" + left + ")";
        }
    }

    public final int height;
    public final int width;
    public final int tile;
    public final int stride;
    public final List<Box> boxes;

    public TilePlan(int height, int width, int tile, int stride) {
        if (tile <= 0 || stride <= 0 || stride > tile) {
            throw new IllegalArgumentException("tile " + tile + " / stride " + stride + ": need 0 < stride <= tile");
        }
        if (height < tile || width < tile) {
            throw new IllegalArgumentException("image of " + height + "x" + width + " (HxW) is smaller than one "
                    + tile + "x" + tile + " tile; pad it first");
        }
        this.height = height;
        this.width = width;
        this.tile = tile;
        this.stride = stride;
        List<Integer> rows = starts(height, tile, stride);
        List<Integer> cols = starts(width, tile, stride);
        boolean bottom = (height - tile) % stride != 0;
        boolean right = (width - tile) % stride != 0;
        List<Box> out = new ArrayList<>();
        for (int top : rows) {
            for (int left : cols) out.add(new Box(out.size(), top, left, tile, "grid"));
        }
        if (bottom) {
            for (int left : cols) out.add(new Box(out.size(), height - tile, left, tile, "bottom"));
        }
        if (right) {
            for (int top : rows) out.add(new Box(out.size(), top, width - tile, tile, "right"));
        }
        if (bottom && right) out.add(new Box(out.size(), height - tile, width - tile, tile, "corner"));
        this.boxes = Collections.unmodifiableList(out);
    }

    private static List<Integer> starts(int length, int tile, int stride) {
        List<Integer> out = new ArrayList<>();
        for (int s = 0; s <= length - tile; s += stride) out.add(s);
        return out;
    }

    public int count() {
        return boxes.size();
    }
}
