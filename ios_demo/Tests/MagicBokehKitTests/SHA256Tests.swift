import Foundation
import XCTest
@testable import MagicBokehKit

final class SHA256Tests: XCTestCase {
    /// FIPS 180-4 example vectors (one block, empty, two blocks).
    func testKnownVectors() {
        XCTAssertEqual(SHA256Hasher.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256Hasher.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256Hasher.hex(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    /// Feeding in uneven pieces gives the digest of the whole (the file reader feeds 1 MiB blocks).
    func testIncrementalFeedingEqualsOneShot() {
        let bytes = Data((0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        var hasher = SHA256Hasher()
        var offset = 0
        for size in [1, 63, 64, 65, 200, 7] {
            hasher.update(data: bytes.subdata(in: offset..<(offset + size)))
            offset += size
        }
        hasher.update(data: bytes.subdata(in: offset..<bytes.count))
        XCTAssertEqual(hasher.hexDigest(), SHA256Hasher.hex(bytes))
    }

    /// Folder digests sort relative paths component by component, as Python sorts Paths:
    /// "a/b" comes before "a-b" and "a.b/c" although '/' sorts after '-' and '.' as a character.
    func testFolderOrderFollowsPathComponents() throws {
        let folder = Fixtures.temporaryFolder().appendingPathComponent("x.mlpackage")
        for path in ["a.b/c", "a/b", "a-b", "Z"] {
            let url = folder.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(path.utf8).write(to: url)
        }
        XCTAssertEqual(try filesUnder(folder).map { $0.joined(separator: "/") }, ["Z", "a/b", "a-b", "a.b/c"])
        var expected = SHA256Hasher()
        for path in ["Z", "a/b", "a-b", "a.b/c"] {
            expected.update(string: path)
            expected.update(string: path)  // each file holds its own path
        }
        XCTAssertEqual(try sha256OfItem(at: folder), expected.hexDigest())
    }
}
