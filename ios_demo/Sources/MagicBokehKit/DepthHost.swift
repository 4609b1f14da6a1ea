/// Host-side steps around the static depth component (runtime_py.model.depth.estimate_depth_static):
/// the photo resized to S x S bicubically (torch's kernel, a = -0.75, half-pixel centres, aspect
/// ratio not kept) and clamped to [0, 1]; the disparity resized back bilinearly with corners
/// aligned and min-max normalised, `(d - min) / (max - min + 1e-8)`.

/// (1, 3, S, S) float32 sRGB in [0, 1] for the depth component.
public func depthComponentInput(_ image: RGBImage, size: Int) -> [Float] {
    func cubic(_ t: Float) -> [Float] {
        let a: Float = -0.75
        func near(_ x: Float) -> Float { ((a + 2) * x - (a + 3)) * x * x + 1 }
        func far(_ x: Float) -> Float { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
        return [far(t + 1), near(t), near(1 - t), far(2 - t)]
    }
    func taps(_ outSize: Int, _ inSize: Int) -> [(Int, [Float])] {
        let scale = Float(inSize) / Float(outSize)
        return (0..<outSize).map { o in
            let source = (Float(o) + 0.5) * scale - 0.5
            let base = Int(source.rounded(.down))
            return (base, cubic(source - Float(base)))
        }
    }
    let rows = taps(size, image.height), cols = taps(size, image.width)
    var out = [Float](repeating: 0, count: 3 * size * size)
    for c in 0..<3 {
        for (y, (rowBase, rowWeights)) in rows.enumerated() {
            for (x, (colBase, colWeights)) in cols.enumerated() {
                var sum: Float = 0
                for i in 0..<4 {
                    let r = min(max(rowBase - 1 + i, 0), image.height - 1)
                    var line: Float = 0
                    for j in 0..<4 {
                        let col = min(max(colBase - 1 + j, 0), image.width - 1)
                        line += unitValue(image[r, col, c]) * colWeights[j]
                    }
                    sum += line * rowWeights[i]
                }
                out[(c * size + y) * size + x] = min(max(sum, 0), 1)
            }
        }
    }
    return out
}

/// The component's (1, 1, S, S) disparity -> (height, width) depth in [0, 1], larger = nearer.
public func depthFromDisparity(_ disparity: [Float], size: Int, height: Int, width: Int) throws -> FloatMap {
    guard disparity.count == size * size else {
        throw BokehError.model("depth component returned \(disparity.count) values, expected \(size)x\(size)")
    }
    if let bad = disparity.firstIndex(where: { !$0.isFinite }) {
        throw BokehError.model("depth component returned a non-finite value at element \(bad)")
    }
    func positions(_ outSize: Int) -> [(Int, Float)] {
        (0..<outSize).map { o in
            let source = outSize > 1 ? Float(o) * Float(size - 1) / Float(outSize - 1) : 0
            let base = min(Int(source.rounded(.down)), size - 1)
            return (base, source - Float(base))
        }
    }
    let rows = positions(height), cols = positions(width)
    var values = [Float](repeating: 0, count: height * width)
    for (y, (r0, fy)) in rows.enumerated() {
        let r1 = min(r0 + 1, size - 1)
        for (x, (c0, fx)) in cols.enumerated() {
            let c1 = min(c0 + 1, size - 1)
            let top = disparity[r0 * size + c0] * (1 - fx) + disparity[r0 * size + c1] * fx
            let bottom = disparity[r1 * size + c0] * (1 - fx) + disparity[r1 * size + c1] * fx
            values[y * width + x] = top * (1 - fy) + bottom * fy
        }
    }
    let lo = values.min() ?? 0, hi = values.max() ?? 0
    let range = hi - lo + Float(1e-8)
    return try FloatMap(height: height, width: width, values: values.map { min(max(($0 - lo) / range, 0), 1) })
}
