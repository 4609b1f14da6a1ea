plugins {
    // Android Gradle Plugin, pinned (needs Gradle 8.7+, JDK 17).
    id("com.android.application") version "8.5.2" apply false
}
