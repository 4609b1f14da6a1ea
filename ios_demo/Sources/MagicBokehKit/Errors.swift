/// Every failure the kit reports: one line a user can act on, never a crash.
///
/// The cases say which contract was broken (bad input, a bad artifacts folder, a bad golden,
/// a model call that failed) so an app can react differently to each.
public enum BokehError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The photo, depth map, focus or aperture violates the input contract.
    case input(String)
    /// The artifacts folder or its manifest is missing, corrupt or does not fit the pipeline.
    case manifest(String)
    /// A golden-vector folder is missing, corrupt or disagrees with what was computed.
    case golden(String)
    /// A model component could not be loaded or returned something unusable.
    case model(String)
    /// A file could not be read or written.
    case io(String)

    public var description: String {
        switch self {
        case .input(let message): return "input error: \(message)"
        case .manifest(let message): return "manifest error: \(message)"
        case .golden(let message): return "golden error: \(message)"
        case .model(let message): return "model error: \(message)"
        case .io(let message): return "i/o error: \(message)"
        }
    }
}
