package com.magicbokeh.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A minimal JSON reader and writer: enough for manifest.json, golden.json and the benchmark file,
 * so that core needs no library (Android has org.json, the JVM has nothing built in).
 *
 * <p>Objects become {@code LinkedHashMap<String, Object>}, arrays {@code List<Object>}, numbers
 * {@code Long} when written without fraction or exponent and {@code Double} otherwise, plus
 * {@code String}, {@code Boolean} and {@code null}.
 */
public final class Json {
    private final String text;
    private int pos;

    private Json(String text) {
        this.text = text;
    }

    /** Parse one JSON value; the whole text must be consumed. */
    public static Object parse(String text) {
        Json parser = new Json(text);
        parser.skipSpace();
        Object value = parser.readValue();
        parser.skipSpace();
        if (parser.pos != text.length()) {
            throw parser.error("unexpected text after the JSON value");
        }
        return value;
    }

    private IllegalArgumentException error(String what) {
        int line = 1;
        for (int i = 0; i < pos && i < text.length(); i++) {
            if (text.charAt(i) == '\n') line++;
        }
        return new IllegalArgumentException("invalid JSON at line " + line + " (offset " + pos + "): " + what);
    }

    private void skipSpace() {
        while (pos < text.length()) {
            char c = text.charAt(pos);
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++;
            else break;
        }
    }

    /** Deeper nesting is refused (no real manifest or golden nests more than a few levels). */
    private static final int MAX_DEPTH = 64;
    private int depth;

    private Object readValue() {
        if (pos >= text.length()) throw error("unexpected end of text");
        char c = text.charAt(pos);
        if ((c == '{' || c == '[') && ++depth > MAX_DEPTH) throw error("nested deeper than " + MAX_DEPTH + " levels");
        switch (c) {
            case '{': return readObject();
            case '[': return readArray();
            case '"': return readString();
            case 't': expectWord("true"); return Boolean.TRUE;
            case 'f': expectWord("false"); return Boolean.FALSE;
            case 'n': expectWord("null"); return null;
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return readNumber();
                throw error("unexpected character '" + c + "'");
        }
    }

    private void expectWord(String word) {
        if (!text.startsWith(word, pos)) throw error("expected " + word);
        pos += word.length();
    }

    private Map<String, Object> readObject() {
        Map<String, Object> map = new LinkedHashMap<>();
        pos++;
        skipSpace();
        if (peek() == '}') {
            pos++;
            depth--;
            return map;
        }
        while (true) {
            skipSpace();
            if (peek() != '"') throw error("expected a string key");
            String key = readString();
            skipSpace();
            if (peek() != ':') throw error("expected ':'");
            pos++;
            skipSpace();
            map.put(key, readValue());
            skipSpace();
            char c = peek();
            pos++;
            if (c == '}') {
                depth--;
                return map;
            }
            if (c != ',') throw error("expected ',' or '}'");
        }
    }

    private List<Object> readArray() {
        List<Object> list = new ArrayList<>();
        pos++;
        skipSpace();
        if (peek() == ']') {
            pos++;
            depth--;
            return list;
        }
        while (true) {
            skipSpace();
            list.add(readValue());
            skipSpace();
            char c = peek();
            pos++;
            if (c == ']') {
                depth--;
                return list;
            }
            if (c != ',') throw error("expected ',' or ']'");
        }
    }

    private char peek() {
        if (pos >= text.length()) throw error("unexpected end of text");
        return text.charAt(pos);
    }

    private String readString() {
        StringBuilder out = new StringBuilder();
        pos++;
        while (true) {
            char c = peek();
            pos++;
            if (c == '"') return out.toString();
            if (c == '\\') {
                char e = peek();
                pos++;
                switch (e) {
                    case '"': out.append('"'); break;
                    case '\\': out.append('\\'); break;
                    case '/': out.append('/'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'u':
                        if (pos + 4 > text.length()) throw error("short \\u escape");
                        try {
                            out.append((char) Integer.parseInt(text.substring(pos, pos + 4), 16));
                        } catch (NumberFormatException ex) {
                            throw error("bad \\u escape");
                        }
                        pos += 4;
                        break;
                    default: throw error("bad escape \\" + e);
                }
            } else if (c < 0x20) {
                throw error("control character in a string");
            } else {
                out.append(c);
            }
        }
    }

    private Object readNumber() {
        int start = pos;
        boolean integral = true;
        if (peek() == '-') pos++;
        while (pos < text.length()) {
            char c = text.charAt(pos);
            if (c >= '0' && c <= '9') {
                pos++;
            } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                integral = false;
                pos++;
            } else {
                break;
            }
        }
        String number = text.substring(start, pos);
        try {
            if (integral) {
                try {
                    return Long.parseLong(number);
                } catch (NumberFormatException tooLong) {
                    return Double.parseDouble(number);
                }
            }
            return Double.parseDouble(number);
        } catch (NumberFormatException ex) {
            throw error("bad number '" + number + "'");
        }
    }

    // -- typed access, with messages that name the key ------------------------------------------

    /** {@code value} as an object, or an error naming {@code where}. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> object(Object value, String where) {
        if (value instanceof Map) return (Map<String, Object>) value;
        throw new IllegalArgumentException(where + ": expected a JSON object, got " + describe(value));
    }

    @SuppressWarnings("unchecked")
    public static List<Object> array(Object value, String where) {
        if (value instanceof List) return (List<Object>) value;
        throw new IllegalArgumentException(where + ": expected a JSON array, got " + describe(value));
    }

    public static String string(Object value, String where) {
        if (value instanceof String) return (String) value;
        throw new IllegalArgumentException(where + ": expected a string, got " + describe(value));
    }

    public static long integer(Object value, String where) {
        if (value instanceof Long) return (Long) value;
        if (value instanceof Double && ((Double) value) == Math.rint((Double) value)) return ((Double) value).longValue();
        throw new IllegalArgumentException(where + ": expected an integer, got " + describe(value));
    }

    public static double number(Object value, String where) {
        if (value instanceof Number) return ((Number) value).doubleValue();
        throw new IllegalArgumentException(where + ": expected a number, got " + describe(value));
    }

    public static int[] intArray(Object value, String where) {
        List<Object> list = array(value, where);
        int[] out = new int[list.size()];
        for (int i = 0; i < out.length; i++) out[i] = Math.toIntExact(integer(list.get(i), where + "[" + i + "]"));
        return out;
    }

    /** {@code map.get(key)}, refusing a missing key. */
    public static Object require(Map<String, Object> map, String key, String where) {
        if (!map.containsKey(key)) throw new IllegalArgumentException(where + ": missing key '" + key + "'");
        return map.get(key);
    }

    private static String describe(Object value) {
        if (value == null) return "null";
        String text = value instanceof String ? "\"" + value + "\"" : String.valueOf(value);
        if (text.length() > 40) text = text.substring(0, 40) + "...";
        return value.getClass().getSimpleName() + " " + text;
    }

    // -- writing --------------------------------------------------------------------------------

    /** One line, keys sorted, ", " and ": " separators: Python's {@code json.dumps(value, sort_keys=True)} for ASCII data. */
    public static String writeCompact(Object value) {
        StringBuilder out = new StringBuilder();
        compact(value, out);
        return out.toString();
    }

    private static void compact(Object value, StringBuilder out) {
        if (value instanceof Map) {
            java.util.TreeMap<String, Object> sorted = new java.util.TreeMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) sorted.put(String.valueOf(e.getKey()), e.getValue());
            out.append('{');
            int i = 0;
            for (Map.Entry<String, Object> e : sorted.entrySet()) {
                if (i++ > 0) out.append(", ");
                quote(e.getKey(), out);
                out.append(": ");
                compact(e.getValue(), out);
            }
            out.append('}');
        } else if (value instanceof List) {
            out.append('[');
            List<?> list = (List<?>) value;
            for (int i = 0; i < list.size(); i++) {
                if (i > 0) out.append(", ");
                compact(list.get(i), out);
            }
            out.append(']');
        } else {
            write(value, out, 0);
        }
    }

    /** Serialise maps, lists, strings, numbers, booleans and null, indented by two spaces. */
    public static String write(Object value) {
        StringBuilder out = new StringBuilder();
        write(value, out, 0);
        return out.append('\n').toString();
    }

    private static void write(Object value, StringBuilder out, int indent) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof String) {
            quote((String) value, out);
        } else if (value instanceof Boolean || value instanceof Integer || value instanceof Long) {
            out.append(value);
        } else if (value instanceof Number) {
            double d = ((Number) value).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) out.append("null");
            else out.append(d);
        } else if (value instanceof Map) {
            Map<?, ?> map = (Map<?, ?>) value;
            if (map.isEmpty()) {
                out.append("{}");
                return;
            }
            out.append("{\n");
            int i = 0;
            for (Map.Entry<?, ?> e : map.entrySet()) {
                indent(out, indent + 1);
                quote(String.valueOf(e.getKey()), out);
                out.append(": ");
                write(e.getValue(), out, indent + 1);
                out.append(++i < map.size() ? ",\n" : "\n");
            }
            indent(out, indent);
            out.append('}');
        } else if (value instanceof List) {
            List<?> list = (List<?>) value;
            if (list.isEmpty()) {
                out.append("[]");
                return;
            }
            out.append('[');
            for (int i = 0; i < list.size(); i++) {
                if (i > 0) out.append(", ");
                write(list.get(i), out, indent + 1);
            }
            out.append(']');
        } else {
            throw new IllegalArgumentException("cannot write " + value.getClass().getName() + " as JSON");
        }
    }

    private static void indent(StringBuilder out, int level) {
        for (int i = 0; i < level; i++) out.append("  ");
    }

    private static void quote(String s, StringBuilder out) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
            }
        }
        out.append('"');
    }
}
