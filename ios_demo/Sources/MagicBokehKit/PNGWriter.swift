import Foundation

/// A minimal PNG encoder (8-bit RGB, no compression: zlib "stored" blocks), with tEXt chunks for
/// metadata. Foundation on Linux has no image encoder; on Apple systems the app uses ImageIO,
/// this is for the command line and the tests everywhere.
public enum PNGWriter {
    /// PNG bytes of an RGB image, with one tEXt chunk per `text` entry (keys 1-79 Latin-1 chars).
    public static func encode(_ image: RGBImage, text: [(String, String)] = []) throws -> Data {
        guard image.channels == 3 else { throw BokehError.input("PNG writer takes RGB images, got \(image.channels) channels") }
        var png = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var header = Data()
        header.appendBigEndian(UInt32(image.width))
        header.appendBigEndian(UInt32(image.height))
        header.append(contentsOf: [8, 2, 0, 0, 0])  // 8 bits, truecolour, deflate, adaptive filters, no interlace
        appendChunk("IHDR", header, to: &png)
        for (key, value) in text {
            guard (1...79).contains(key.utf8.count), let keyBytes = key.data(using: .isoLatin1) else {
                throw BokehError.input("PNG text key '\(key)' must be 1-79 Latin-1 characters")
            }
            // tEXt is Latin-1; anything else is escaped so the chunk stays valid.
            let valueBytes = value.data(using: .isoLatin1) ?? Data(value.unicodeScalars.map { $0.isASCII ? String($0) : "\\u{\(String($0.value, radix: 16))}" }.joined().utf8)
            appendChunk("tEXt", keyBytes + Data([0]) + valueBytes, to: &png)
        }
        var scanlines = Data(capacity: image.height * (image.width * 3 + 1))
        image.values.withUnsafeBufferPointer { pixels in
            for r in 0..<image.height {
                scanlines.append(0)  // filter type None
                let start = r * image.width * 3
                scanlines.append(contentsOf: pixels[start..<(start + image.width * 3)])
            }
        }
        appendChunk("IDAT", zlibStored(scanlines), to: &png)
        appendChunk("IEND", Data(), to: &png)
        return png
    }

    /// Writes the PNG atomically (a temporary file beside `url`, then a rename).
    public static func write(_ image: RGBImage, to url: URL, text: [(String, String)] = []) throws {
        let data = try encode(image, text: text)
        do { try data.write(to: url, options: .atomic) } catch {
            throw BokehError.io("cannot write \(url.path): \(error.localizedDescription)")
        }
    }

    static func appendChunk(_ type: String, _ body: Data, to png: inout Data) {
        png.appendBigEndian(UInt32(body.count))
        let typed = Data(type.utf8) + body
        png.append(typed)
        png.appendBigEndian(crc32(typed))
    }

    /// A zlib stream of stored (uncompressed) deflate blocks of at most 65535 bytes.
    static func zlibStored(_ data: Data) -> Data {
        var out = Data([0x78, 0x01])
        var offset = 0
        repeat {
            let length = min(65535, data.count - offset)
            let final: UInt8 = offset + length == data.count ? 1 : 0
            out.append(final)
            out.append(UInt8(length & 0xFF)); out.append(UInt8(length >> 8))
            out.append(UInt8(~length & 0xFF)); out.append(UInt8((~length >> 8) & 0xFF))
            out.append(data.subdata(in: (data.startIndex + offset)..<(data.startIndex + offset + length)))
            offset += length
        } while offset < data.count
        out.appendBigEndian(adler32(data))
        return out
    }

    private static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO 3309 / PNG).
    public static func crc32(_ data: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for byte in data { c = crcTable[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// Adler-32 (zlib's checksum).
    public static func adler32(_ data: Data) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        var pending = 0
        for byte in data {
            a += UInt32(byte)
            b += a
            pending += 1
            if pending == 5552 { a %= 65521; b %= 65521; pending = 0 }
        }
        return (b % 65521) << 16 | (a % 65521)
    }
}

extension Data {
    mutating func appendBigEndian(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)])
    }
}
