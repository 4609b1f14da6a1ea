package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/**
 * Core against golden vectors of the reference pipeline (generated at test time by
 * tests/android_demo with {@code python -m runtime_py golden}; the folder names below are the
 * cases it writes). Each case checks every intermediate (GoldenCheck) plus what makes it a case.
 */
class GoldenTest {
    @Test
    void tinyMaskFocus() {
        Golden g = GoldenCheck.check("tiny_mask");
        assertEquals("mask", g.focusMode);
    }

    @Test
    void tinyTapFocus() {
        Golden g = GoldenCheck.check("tiny_point");
        assertEquals("point", g.focusMode);
    }

    @Test
    void tinyImageSmallerThanATile() {
        Golden g = GoldenCheck.check("tiny_small");
        assertTrue(g.padRows > 0 && g.padCols > 0, "the case must pad both sides");
        assertEquals(1, g.boxes.size());
    }

    @Test
    void tinySizeNotAMultipleOfTheStride() {
        Golden g = GoldenCheck.check("tiny_nonmultiple");
        for (String kind : new String[] {"grid", "bottom", "right", "corner"}) {
            assertTrue(g.boxes.stream().anyMatch(b -> b.kind.equals(kind)), "the plan must hold a " + kind + " tile");
        }
    }

    @Test
    void tinyApertureK1() {
        assertEquals(1, GoldenCheck.check("tiny_k1").k);
    }

    @Test
    void tinyApertureK32() {
        assertEquals(32, GoldenCheck.check("tiny_k32").k);
    }

    @Test
    void defaultModelMaskFocus() {
        Golden g = GoldenCheck.check("default_mask");
        assertEquals(512, g.config.tile);
        assertTrue(g.boxes.size() > 1, "the default-model case must blend several tiles");
    }

    @Test
    void defaultModelTapFocusSmallImage() {
        Golden g = GoldenCheck.check("default_point_small");
        assertEquals("point", g.focusMode);
        assertTrue(g.padRows > 0 || g.padCols > 0, "the case must be padded");
    }
}
