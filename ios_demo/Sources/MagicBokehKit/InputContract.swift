/// The published input contract: 8-bit depth, the focus value, the defocus map and the
/// in-focus mask, computed in float32 step by step exactly as the reference pipeline
/// (runtime_py/pipeline.py) does, so every value matches its golden bit for bit.

/// Where to focus.
public enum FocusSpec: Sendable {
    /// The lower median of the 8-bit depth under the non-zero pixels of a mask (e.g. a subject mask).
    case mask(ByteMap)
    /// The depth at one pixel: column `x`, row `y` (a tap on the screen).
    case point(x: Int, y: Int)
}

/// Aperture K: an integer in 1...32 (larger = stronger blur, thinner in-focus band).
public let apertureRange: ClosedRange<Int> = 1...32

/// Checks a depth map in [0, 1] (larger = nearer) against the photo's size.
public func validateDepth(_ depth: FloatMap, height: Int, width: Int) throws {
    guard depth.channels == 1 else {
        throw BokehError.input("depth: expected a single-channel map, got \(depth.channels) channels")
    }
    guard depth.height == height, depth.width == width else {
        throw BokehError.input("depth: depth map is \(depth.sizeText) (HxW) but the image is \(height)x\(width)")
    }
    var bad = 0, outside = 0
    for v in depth.values {
        if !v.isFinite { bad += 1 } else if v < 0 || v > 1 { outside += 1 }
    }
    if bad > 0 { throw BokehError.input("depth: \(bad) depth value(s) are NaN or infinite") }
    if outside > 0 { throw BokehError.input("depth: \(outside) depth value(s) lie outside [0, 1]") }
}

/// `uint8(depth * 255)`: the product in float32, truncated toward zero.
public func depthToU8(_ depth: FloatMap) -> ByteMap {
    ByteMap(unchecked: depth.height, depth.width, 1, depth.values.map { UInt8(($0 * Float(255)).rounded(.towardZero)) })
}

/// `u8 / 255` in float32 (torchvision's ToTensor).
@inlinable public func unitValue(_ u: UInt8) -> Float { Float(u) / Float(255) }

/// The focus depth f in [0, 1] (a float32) for a focus specification on the 8-bit depth.
///
/// A mask gives torch's median (the lower middle value for an even count) of the depth under it,
/// / 255; an empty mask is refused (the published code would silently focus at depth 0).
/// A point gives the depth there / 255.
public func resolveFocus(depthU8: ByteMap, focus: FocusSpec) throws -> Float {
    switch focus {
    case .mask(let mask):
        guard mask.channels == 1 else {
            throw BokehError.input("focus mask: expected a single-channel mask, got \(mask.channels) channels")
        }
        guard mask.height == depthU8.height, mask.width == depthU8.width else {
            throw BokehError.input("focus mask: mask is \(mask.sizeText) (HxW) but the image is \(depthU8.sizeText)")
        }
        var histogram = [Int](repeating: 0, count: 256)
        var count = 0
        for (m, d) in zip(mask.values, depthU8.values) where m != 0 {
            histogram[Int(d)] += 1
            count += 1
        }
        guard count > 0 else {
            throw BokehError.input("focus mask: the focus mask is empty (no non-zero pixel), so there is nothing to focus on; give a mask that covers the subject or a focus point")
        }
        let rank = (count - 1) / 2  // 0-based rank of the lower middle value
        var seen = 0
        for value in 0..<256 {
            seen += histogram[value]
            if seen > rank { return unitValue(UInt8(value)) }
        }
        fatalError("unreachable: the histogram holds count values")
    case .point(let x, let y):
        guard (0..<depthU8.width).contains(x), (0..<depthU8.height).contains(y) else {
            throw BokehError.input("focus point: (\(x), \(y)) lies outside the \(depthU8.width)x\(depthU8.height) (WxH) image; x must be in 0..\(depthU8.width - 1), y in 0..\(depthU8.height - 1)")
        }
        return unitValue(depthU8[y, x])
    }
}

/// Checks K is an integer in 1...32.
public func validateAperture(_ K: Int) throws {
    guard apertureRange.contains(K) else {
        throw BokehError.input("K (aperture) must be an integer in 1..32, got \(K)")
    }
}

/// `D = (abs(u8 / 255 - f) * K) / 32` and `m = 1 - [D > threshold]`, both float32, each step rounded.
public func defocusMaps(depthU8: ByteMap, focus: Float, K: Int, threshold: Float) throws -> (defocus: FloatMap, inFocus: FloatMap) {
    try validateAperture(K)
    let k = Float(K)
    var defocus = [Float](repeating: 0, count: depthU8.values.count)
    var inFocus = [Float](repeating: 0, count: depthU8.values.count)
    for i in 0..<depthU8.values.count {
        let product = abs(unitValue(depthU8.values[i]) - focus) * k
        let d = product / Float(32)
        defocus[i] = d
        inFocus[i] = d > threshold ? 0 : 1
    }
    return (FloatMap(unchecked: depthU8.height, depthU8.width, 1, defocus),
            FloatMap(unchecked: depthU8.height, depthU8.width, 1, inFocus))
}

/// The photo tile as the encoder takes it: (1, 3, T, T) float32 `2 * (u8 / 255) - 1`.
public func modelRangeTile(_ image: RGBImage, box: TileBox) -> [Float] {
    let t = box.size
    var out = [Float](repeating: 0, count: 3 * t * t)
    for c in 0..<3 {
        for r in 0..<t {
            let rowBase = ((box.top + r) * image.width + box.left) * 3 + c
            let outBase = (c * t + r) * t
            for col in 0..<t {
                out[outBase + col] = unitValue(image.values[rowBase + col * 3]) * Float(2) - Float(1)
            }
        }
    }
    return out
}

/// A (1, 1, T, T) slice of a single-channel map.
public func mapTile(_ map: FloatMap, box: TileBox) -> [Float] {
    let t = box.size
    var out = [Float]()
    out.reserveCapacity(t * t)
    for r in 0..<t {
        let start = (box.top + r) * map.width + box.left
        out.append(contentsOf: map.values[start..<(start + t)])
    }
    return out
}

/// (3, H, W) float in [-1, 1] (top-left `height` x `width` of a `paddedWidth`-wide plane) ->
/// HWC uint8 `trunc(clamp((y + 1) / 2, 0, 1) * 255)`.
public func modelRangeToU8(_ planes: [Float], planeHeight: Int, planeWidth: Int, height: Int, width: Int) -> RGBImage {
    var out = [UInt8](repeating: 0, count: height * width * 3)
    let plane = planeHeight * planeWidth
    for r in 0..<height {
        for col in 0..<width {
            for c in 0..<3 {
                let y = planes[c * plane + r * planeWidth + col]
                var v = (y + Float(1)) / Float(2)
                // torch's clamp: NaN stays NaN (then byte() gives 0); values outside go to the bounds.
                if v < 0 { v = 0 } else if v > 1 { v = 1 }
                let scaled = v * Float(255)
                out[(r * width + col) * 3 + c] = scaled.isNaN ? 0 : UInt8(scaled.rounded(.towardZero))
            }
        }
    }
    return RGBImage(unchecked: height, width, 3, out)
}
