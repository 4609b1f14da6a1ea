package com.magicbokeh.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {
    @Test
    void parsesNestedValuesNumbersAndEscapes() {
        Object value = Json.parse("{\"a\": [1, -2.5e3, true, null], \"s\": \"x\\\"\\u00e9\\n\", \"o\": {}}");
        Map<String, Object> map = Json.object(value, "root");
        List<Object> a = Json.array(map.get("a"), "a");
        assertEquals(1L, a.get(0));
        assertEquals(-2500.0, a.get(1));
        assertEquals(Boolean.TRUE, a.get(2));
        assertEquals(null, a.get(3));
        assertEquals("x\"\u00e9\n", map.get("s"));
        assertTrue(Json.object(map.get("o"), "o").isEmpty());
    }

    @Test
    void roundTripsWhatItWrites() {
        Object value = Json.parse("{\"k\": [1, 2.5, \"t\\\\\"], \"n\": {\"z\": false}}");
        assertEquals(value, Json.parse(Json.write(value)));
    }

    @Test
    void refusesBrokenTextWithTheLine() {
        IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> Json.parse("{\n\"a\": [1,,]}"));
        assertTrue(ex.getMessage().contains("line 2"), ex.getMessage());
        assertThrows(IllegalArgumentException.class, () -> Json.parse("{\"a\": 1} x"));
        assertThrows(IllegalArgumentException.class, () -> Json.parse("\"open"));
        IllegalArgumentException deep = assertThrows(IllegalArgumentException.class,
                () -> Json.parse("[".repeat(100_000) + "]".repeat(100_000)));
        assertTrue(deep.getMessage().contains("nested deeper"), deep.getMessage());
        assertEquals(1L, Json.array(Json.parse("[".repeat(60) + "1" + "]".repeat(60)), "x").size());
    }
}
