/// Tiles and their blending, exactly as runtime_py/tiling.py: the published run order, the
/// float32 linear ramps as torch.linspace computes them, and float32 accumulation in tile order.

/// One tile: its top-left corner and size in pixels, and its position in the run order.
public struct TileBox: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable { case grid, bottom, right, corner }
    public let index: Int
    public let top: Int
    public let left: Int
    public let size: Int
    public let kind: Kind

    public init(index: Int, top: Int, left: Int, size: Int, kind: Kind) {
        self.index = index
        self.top = top
        self.left = left
        self.size = size
        self.kind = kind
    }
}

/// The tiling of one (padded) image size.
public struct TilePlan: Sendable, Equatable {
    public let height: Int
    public let width: Int
    public let tile: Int
    public let stride: Int
    public let boxes: [TileBox]

    /// Every tile in the order the reference runs and blends them: the regular grid row-major,
    /// then the bottom-flush row (left to right), the right-flush column (top to bottom) and the
    /// bottom-right corner, the last three only when the grid stops short of that edge.
    public init(height: Int, width: Int, tile: Int, stride: Int) throws {
        guard tile > 0, stride > 0 else {
            throw BokehError.input("tile and stride must be positive, got tile=\(tile), stride=\(stride)")
        }
        guard stride <= tile else {
            throw BokehError.input("stride (\(stride)) must not exceed the tile size (\(tile))")
        }
        guard height >= tile, width >= tile else {
            throw BokehError.input("image of \(height)x\(width) (HxW) is smaller than one \(tile)x\(tile) tile; pad it first")
        }
        let rows = Array(Swift.stride(from: 0, through: height - tile, by: stride))
        let cols = Array(Swift.stride(from: 0, through: width - tile, by: stride))
        let needBottom = (height - tile) % stride != 0
        let needRight = (width - tile) % stride != 0
        var positions: [(Int, Int, TileBox.Kind)] = []
        for top in rows { for left in cols { positions.append((top, left, .grid)) } }
        if needBottom { for left in cols { positions.append((height - tile, left, .bottom)) } }
        if needRight { for top in rows { positions.append((top, width - tile, .right)) } }
        if needBottom && needRight { positions.append((height - tile, width - tile, .corner)) }
        self.height = height
        self.width = width
        self.tile = tile
        self.stride = stride
        self.boxes = positions.enumerated().map { TileBox(index: $0.offset, top: $0.element.0, left: $0.element.1, size: tile, kind: $0.element.2) }
    }

    public var count: Int { boxes.count }
}

/// The (rows, columns) of reflect padding the reference adds at the bottom / right so that each
/// side reaches one tile.
public func tilePadding(height: Int, width: Int, tile: Int) -> (rows: Int, columns: Int) {
    (max(0, tile - height), max(0, tile - width))
}

/// `torch.linspace(start, end, n)` in float32 as torch 2.x computes it on the CPU: with
/// `step = (end - start) / (n - 1)`, index `i < n / 2` is `start + step * i` and the others
/// `end - step * (n - 1 - i)`, each a fused multiply-add (one rounding). The fused form is what
/// torch's compiled kernel does; the unfused one differs in the last bit at some points
/// (e.g. 5 of 64 values), which the blend weights would inherit.
public func torchLinspace(start: Float, end: Float, count n: Int) -> [Float] {
    precondition(n >= 1)
    if n == 1 { return [start] }
    let step = (end - start) / Float(n - 1)
    let halfway = n / 2
    return (0..<n).map { i in
        i < halfway ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - 1 - i))
    }
}

/// Weights along one axis of a tile starting at `start` on an axis of `length` pixels.
public func rampWeights(start: Int, length: Int, tile: Int, stride: Int) -> [Float] {
    var weight = [Float](repeating: 1, count: tile)
    let ramp = tile - stride
    if ramp == 0 { return weight }
    if start > 0 {
        let rising = torchLinspace(start: 0, end: 1, count: ramp)
        for i in 0..<ramp { weight[i] *= rising[i] }
    }
    if start + tile < length {
        let falling = torchLinspace(start: 1, end: 0, count: ramp)
        for i in 0..<ramp { weight[tile - ramp + i] *= falling[i] }
    }
    return weight
}

/// The (T, T) float32 blend weight of one tile: `row[r] * column[c]`.
public func blendWeights(box: TileBox, plan: TilePlan) -> [Float] {
    let rows = rampWeights(start: box.top, length: plan.height, tile: box.size, stride: plan.stride)
    let cols = rampWeights(start: box.left, length: plan.width, tile: box.size, stride: plan.stride)
    var out = [Float](repeating: 0, count: box.size * box.size)
    for r in 0..<box.size {
        for c in 0..<box.size { out[r * box.size + c] = rows[r] * cols[c] }
    }
    return out
}

/// Accumulates `sum(weight * tile)` and `sum(weight)` in float32, in tile order, then divides:
/// the reference's blending, bit for bit. Holds one (C, H, W) accumulator, never all tiles.
public struct TileBlender: Sendable {
    public let plan: TilePlan
    public let channels: Int
    private var accumulated: [Float]
    private var weightSum: [Float]
    private var nextIndex = 0

    public init(plan: TilePlan, channels: Int = 3) {
        self.plan = plan
        self.channels = channels
        accumulated = [Float](repeating: 0, count: channels * plan.height * plan.width)
        weightSum = [Float](repeating: 0, count: plan.height * plan.width)
    }

    /// Adds tile `box` (its (C, T, T) output); tiles must come in plan order.
    public mutating func add(_ tile: [Float], box: TileBox) throws {
        let t = box.size
        guard box.index == nextIndex else {
            throw BokehError.model("tile \(box.index) arrived out of order (expected tile \(nextIndex))")
        }
        guard tile.count == channels * t * t else {
            throw BokehError.model("tile \(box.index): expected \(channels)x\(t)x\(t) = \(channels * t * t) values, got \(tile.count)")
        }
        let weight = blendWeights(box: box, plan: plan)
        let plane = plan.height * plan.width
        for r in 0..<t {
            let rowBase = (box.top + r) * plan.width + box.left
            for col in 0..<t {
                let w = weight[r * t + col]
                for c in 0..<channels {
                    let product = tile[(c * t + r) * t + col] * w
                    accumulated[c * plane + rowBase + col] += product
                }
                weightSum[rowBase + col] += w
            }
        }
        nextIndex += 1
    }

    /// `accumulated / weightSum`, (C, H, W); every pixel must have received weight.
    public func finish() throws -> [Float] {
        guard nextIndex == plan.count else {
            throw BokehError.model("only \(nextIndex) of \(plan.count) tiles were blended")
        }
        let plane = plan.height * plan.width
        if let zero = weightSum.firstIndex(where: { !($0 > 0) }) {
            throw BokehError.model("blending weights sum to 0 at pixel (row=\(zero / plan.width), col=\(zero % plan.width))")
        }
        var out = accumulated
        for c in 0..<channels {
            for i in 0..<plane { out[c * plane + i] = accumulated[c * plane + i] / weightSum[i] }
        }
        return out
    }
}
