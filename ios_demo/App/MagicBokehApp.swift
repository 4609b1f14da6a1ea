import SwiftUI

/// The MagicBokeh demo app: pick or capture a photo, tap to focus, choose K, render tile by tile
/// through the Core ML packages bundled in the app's "Artifacts" folder, compare, save.
@main
struct MagicBokehApp: App {
    @State private var session = BokehSession()

    var body: some Scene {
        WindowGroup {
            ContentView(session: session)
                .task { await session.loadModel() }
        }
    }
}
