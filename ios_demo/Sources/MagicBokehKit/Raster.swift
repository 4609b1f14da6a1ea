/// A row-major (height, width, channels) array: photos (3 channels of UInt8), depth and
/// defocus maps (1 channel of Float), masks (1 channel of UInt8).
///
/// Interleaved HWC is what camera frameworks hand over; the model's NCHW tiles are cut from it.
public struct Raster<Element: Sendable>: Sendable {
    public let height: Int
    public let width: Int
    public let channels: Int
    public var values: [Element]

    /// Wraps `values` (count must be height * width * channels).
    public init(height: Int, width: Int, channels: Int = 1, values: [Element]) throws {
        guard height > 0, width > 0, channels > 0 else {
            throw BokehError.input("an image must be at least 1x1 with one channel, got \(height)x\(width)x\(channels)")
        }
        guard values.count == height * width * channels else {
            throw BokehError.input("\(height)x\(width)x\(channels) needs \(height * width * channels) values, got \(values.count)")
        }
        self.height = height
        self.width = width
        self.channels = channels
        self.values = values
    }

    /// A raster filled with one value.
    public init(height: Int, width: Int, channels: Int = 1, repeating value: Element) {
        self.height = height
        self.width = width
        self.channels = channels
        self.values = [Element](repeating: value, count: height * width * channels)
    }

    @inlinable public subscript(row: Int, column: Int, channel: Int = 0) -> Element {
        get { values[(row * width + column) * channels + channel] }
        set { values[(row * width + column) * channels + channel] = newValue }
    }

    /// "HxW" for messages.
    public var sizeText: String { "\(height)x\(width)" }
}

/// An 8-bit RGB photo, HWC.
public typealias RGBImage = Raster<UInt8>
/// A single-channel float map, e.g. depth in [0, 1] or the defocus map.
public typealias FloatMap = Raster<Float>
/// A single-channel 8-bit map, e.g. 8-bit depth or a focus mask.
public typealias ByteMap = Raster<UInt8>

extension Raster {
    /// numpy's `reflect` padding at the bottom and right (the edge is not repeated; the
    /// reflection repeats when the padding exceeds the side), as the reference pads small images.
    public func reflectPadded(rows: Int, columns: Int) -> Raster<Element> {
        if rows == 0 && columns == 0 { return self }
        let newHeight = height + rows, newWidth = width + columns
        let rowSource = (0..<newHeight).map { reflectIndex($0, length: height) }
        let columnSource = (0..<newWidth).map { reflectIndex($0, length: width) }
        var out = [Element]()
        out.reserveCapacity(newHeight * newWidth * channels)
        for r in rowSource {
            for c in columnSource {
                let base = (r * width + c) * channels
                for k in 0..<channels { out.append(values[base + k]) }
            }
        }
        return Raster(unchecked: newHeight, newWidth, channels, out)
    }

    /// The top-left `height` x `width` part.
    public func cropped(height newHeight: Int, width newWidth: Int) -> Raster<Element> {
        if newHeight == height && newWidth == width { return self }
        var out = [Element]()
        out.reserveCapacity(newHeight * newWidth * channels)
        for r in 0..<newHeight {
            let start = r * width * channels
            out.append(contentsOf: values[start..<(start + newWidth * channels)])
        }
        return Raster(unchecked: newHeight, newWidth, channels, out)
    }

    init(unchecked height: Int, _ width: Int, _ channels: Int, _ values: [Element]) {
        self.height = height
        self.width = width
        self.channels = channels
        self.values = values
    }
}

/// Index into a side of `length` pixels for position `index` of its reflect-padded extension.
@inlinable func reflectIndex(_ index: Int, length: Int) -> Int {
    if index < length { return index }
    if length == 1 { return 0 }
    let period = 2 * (length - 1)
    let m = index % period
    return m >= length ? period - m : m
}
