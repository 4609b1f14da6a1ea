import Foundation

/// Reads the depth maps the Python tools write (`.npy`, version 1-3, little-endian float32 or
/// float64, C order, 2-D or (H, W, 1) / (1, H, W)), so the command line takes the same files.
public enum NPYReader {
    public static func readDepth(_ url: URL) throws -> FloatMap {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw BokehError.io("cannot read \(url.path)")
        }
        let bytes = [UInt8](data)
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8) else {
            throw BokehError.input("\(url.lastPathComponent) is not a .npy file")
        }
        let major = bytes[6]
        let headerLength: Int, headerStart: Int
        if major == 1 {
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        } else {
            guard bytes.count >= 12 else { throw BokehError.input("\(url.lastPathComponent): truncated .npy header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        }
        guard bytes.count >= headerStart + headerLength,
              let header = String(bytes: bytes[headerStart..<(headerStart + headerLength)], encoding: .utf8) else {
            throw BokehError.input("\(url.lastPathComponent): truncated .npy header")
        }
        let isFloat32 = header.contains("'<f4'"), isFloat64 = header.contains("'<f8'")
        guard isFloat32 || isFloat64 else {
            throw BokehError.input("\(url.lastPathComponent): depth must be little-endian float32 or float64 (header \(header.trimmingCharacters(in: .whitespacesAndNewlines)))")
        }
        guard header.contains("'fortran_order': False") else {
            throw BokehError.input("\(url.lastPathComponent): Fortran-ordered arrays are not supported")
        }
        guard let open = header.firstIndex(of: "("), let close = header[open...].firstIndex(of: ")") else {
            throw BokehError.input("\(url.lastPathComponent): no shape in the .npy header")
        }
        let shape = header[header.index(after: open)..<close].split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let plane = shape.filter { $0 != 1 }
        guard shape.count >= 2, shape.count <= 3, plane.count == 2 || (plane.count < 2 && shape.count >= 2) else {
            throw BokehError.input("\(url.lastPathComponent): expected an (H, W) depth map, got shape \(shape)")
        }
        let (height, width): (Int, Int) = shape.count == 2 ? (shape[0], shape[1]) : (shape[0] == 1 ? (shape[1], shape[2]) : (shape[0], shape[1]))
        let size = isFloat32 ? 4 : 8
        let start = headerStart + headerLength
        guard bytes.count - start == height * width * size else {
            throw BokehError.input("\(url.lastPathComponent): \(bytes.count - start) data bytes for shape \(shape)")
        }
        var values = [Float](repeating: 0, count: height * width)
        data.withUnsafeBytes { raw in
            for i in 0..<values.count {
                values[i] = isFloat32
                    ? Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start + 4 * i, as: UInt32.self)))
                    : Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: start + 8 * i, as: UInt64.self))))
            }
        }
        return try FloatMap(height: height, width: width, values: values)
    }
}
