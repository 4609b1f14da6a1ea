import Foundation
import XCTest
@testable import MagicBokehKit

final class PNGWriterTests: XCTestCase {
    func testChecksumsMatchKnownValues() {
        XCTAssertEqual(PNGWriter.crc32(Data("IEND".utf8)), 0xAE42_6082)  // every PNG's last chunk CRC
        XCTAssertEqual(PNGWriter.adler32(Data("Wikipedia".utf8)), 0x11E6_0398)
    }

    /// Stored deflate blocks hold at most 65535 bytes: a larger image splits into several and the
    /// payload reassembles to the filtered scanlines.
    func testStoredBlocksReassembleToTheScanlines() throws {
        let width = 200, height = 120  // 120 * 601 = 72120 bytes: two blocks
        let values = (0..<(width * height * 3)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let image = try RGBImage(height: height, width: width, channels: 3, values: values)
        let png = try PNGWriter.encode(image, text: [("magicbokeh:model", "test")])
        let bytes = [UInt8](png)
        XCTAssertEqual(Array(bytes[0..<8]), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        // Walk the chunks, checking every CRC and collecting IDAT.
        var offset = 8, idat = [UInt8](), types: [String] = []
        while offset < bytes.count {
            let length = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            let type = String(decoding: bytes[(offset + 4)..<(offset + 8)], as: UTF8.self)
            let body = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            let crc = bytes[(offset + 8 + length)..<(offset + 12 + length)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            XCTAssertEqual(crc, PNGWriter.crc32(Data(type.utf8) + Data(body)), "CRC of \(type)")
            if type == "IDAT" { idat += body }
            types.append(type)
            offset += 12 + length
        }
        XCTAssertEqual(types, ["IHDR", "tEXt", "IDAT", "IEND"])
        var payload = [UInt8](), position = 2, blocks = 0
        while true {
            let final = idat[position] & 1
            let length = Int(idat[position + 1]) | Int(idat[position + 2]) << 8
            XCTAssertEqual(UInt16(length) ^ 0xFFFF, UInt16(idat[position + 3]) | UInt16(idat[position + 4]) << 8)
            payload += idat[(position + 5)..<(position + 5 + length)]
            position += 5 + length
            blocks += 1
            if final == 1 { break }
        }
        XCTAssertEqual(blocks, 2)
        var expected = [UInt8]()
        for r in 0..<height { expected.append(0); expected += values[(r * width * 3)..<((r + 1) * width * 3)] }
        XCTAssertEqual(payload, expected)
        XCTAssertEqual(idat[position...].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }, PNGWriter.adler32(Data(expected)))
    }
}
