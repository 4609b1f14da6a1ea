import Foundation

/// SHA-256 (FIPS 180-4), written out because CryptoKit does not exist on Linux and the manifest's
/// file hashes must be checked on every platform the kit builds on.
public struct SHA256Hasher {
    private var state: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    private var buffer: [UInt8] = []
    private var length: UInt64 = 0

    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    public init() {}

    /// Feeds a block of bytes (fast path: whole 64-byte blocks go straight to the compressor).
    public mutating func update(data: Data) {
        length &+= UInt64(data.count)
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var offset = 0
            let bytes = raw.bindMemory(to: UInt8.self)
            if !buffer.isEmpty {
                let take = min(64 - buffer.count, bytes.count)
                buffer.append(contentsOf: bytes[0..<take])
                offset = take
                if buffer.count == 64 {
                    compress(buffer[...])
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            while bytes.count - offset >= 64 {
                compress(Array(bytes[offset..<(offset + 64)])[...])
                offset += 64
            }
            buffer.append(contentsOf: bytes[offset...])
        }
    }

    /// Feeds the UTF-8 bytes of a string.
    public mutating func update(string: String) { update(data: Data(string.utf8)) }

    private mutating func compress(_ block: ArraySlice<UInt8>) {
        var w = [UInt32](repeating: 0, count: 64)
        let base = block.startIndex
        for i in 0..<16 {
            w[i] = UInt32(block[base + 4 * i]) << 24 | UInt32(block[base + 4 * i + 1]) << 16
                | UInt32(block[base + 4 * i + 2]) << 8 | UInt32(block[base + 4 * i + 3])
        }
        for i in 16..<64 {
            let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
        }
        var a = state[0], b = state[1], c = state[2], d = state[3]
        var e = state[4], f = state[5], g = state[6], h = state[7]
        for i in 0..<64 {
            let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            let choice = (e & f) ^ (~e & g)
            let t1 = h &+ s1 &+ choice &+ Self.k[i] &+ w[i]
            let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            let t2 = s0 &+ majority
            h = g; g = f; f = e; e = d &+ t1
            d = c; c = b; b = a; a = t1 &+ t2
        }
        state[0] &+= a; state[1] &+= b; state[2] &+= c; state[3] &+= d
        state[4] &+= e; state[5] &+= f; state[6] &+= g; state[7] &+= h
    }

    @inline(__always) private func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

    /// The digest as 64 lowercase hex characters (consumes the hasher's state).
    public mutating func hexDigest() -> String {
        let bitLength = length &* 8
        var tail = buffer
        tail.append(0x80)
        while tail.count % 64 != 56 { tail.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { tail.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        for start in stride(from: 0, to: tail.count, by: 64) { compress(tail[start..<(start + 64)]) }
        buffer = []
        return state.map { word in
            let hex = String(word, radix: 16)
            return String(repeating: "0", count: 8 - hex.count) + hex
        }.joined()
    }

    /// sha256 of a byte buffer.
    public static func hex(_ data: Data) -> String {
        var hasher = SHA256Hasher()
        hasher.update(data: data)
        return hasher.hexDigest()
    }
}

/// sha256 of a file, or of a folder (an .mlpackage / .mlmodelc / chunk folder) hashed over its
/// files in sorted relative-path order, each contributing its relative path (UTF-8) then its
/// bytes: the same digest as runtime_py.manifest.sha256_file.
public func sha256OfItem(at url: URL) throws -> String {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
        throw BokehError.io("\(url.path) does not exist")
    }
    var hasher = SHA256Hasher()
    if isDirectory.boolValue {
        for relative in try filesUnder(url) {
            hasher.update(string: relative.joined(separator: "/"))
            try feed(url.appendingPathComponent(relative.joined(separator: "/")), into: &hasher)
        }
    } else {
        try feed(url, into: &hasher)
    }
    return hasher.hexDigest()
}

/// Regular files under a folder as relative path components, sorted as Python sorts Path
/// objects (component by component, by code point), so digests agree with the exporter's.
func filesUnder(_ root: URL) throws -> [[String]] {
    var found: [[String]] = []
    func walk(_ folder: URL, _ prefix: [String]) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        for name in names {
            let child = folder.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: child.path, isDirectory: &isDirectory) else { continue }
            if isDirectory.boolValue { try walk(child, prefix + [name]) } else { found.append(prefix + [name]) }
        }
    }
    try walk(root, [])
    func codePoints(_ s: String) -> [UInt32] { s.unicodeScalars.map(\.value) }
    return found.sorted { a, b in
        for (x, y) in zip(a, b) where x != y { return codePoints(x).lexicographicallyPrecedes(codePoints(y)) }
        return a.count < b.count
    }
}

private func feed(_ file: URL, into hasher: inout SHA256Hasher) throws {
    guard let handle = try? FileHandle(forReadingFrom: file) else {
        throw BokehError.io("cannot open \(file.path) for reading")
    }
    defer { try? handle.close() }
    while true {
        let block = try handle.read(upToCount: 1 << 20) ?? Data()
        if block.isEmpty { break }
        hasher.update(data: block)
    }
}
