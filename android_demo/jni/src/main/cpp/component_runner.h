// One ExecuTorch program (.pte) loaded through the C++ Module API and run on float32 inputs.
// Plain C++17 with no JNI: jni_bridge.cpp exposes it to Java. Built by CMakeLists.txt (NDK,
// arm64-v8a) for the app and by android_demo/host/build.sh (g++ against the executorch wheel) here.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace magicbokeh {

// Why a runner call failed; the JNI bridge maps each kind to a Java exception.
enum class RunnerErrorKind { kMissingFile, kLoadFailed, kBadInput, kRunFailed };

class RunnerError : public std::runtime_error {
 public:
  RunnerError(RunnerErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  RunnerErrorKind kind() const { return kind_; }

 private:
  RunnerErrorKind kind_;
};

class ComponentRunner {
 public:
  // Loads `path`'s program and its "forward" method; `name` (encoder, denoiser, ...) labels errors.
  ComponentRunner(const std::string& path, const std::string& name);
  ~ComponentRunner();
  ComponentRunner(const ComponentRunner&) = delete;
  ComponentRunner& operator=(const ComponentRunner&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<std::vector<int32_t>>& input_shapes() const { return input_shapes_; }

  // Runs forward on float32 inputs given as (data, element count, shape); each shape must equal
  // the program's. Returns the first output, copied (the runtime reuses its output buffer).
  std::vector<float> run(const std::vector<const float*>& data, const std::vector<size_t>& lengths,
                         const std::vector<std::vector<int32_t>>& shapes, std::vector<int32_t>* output_shape);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string name_;
  std::vector<std::vector<int32_t>> input_shapes_;
};

std::string shape_string(const std::vector<int32_t>& shape);

}  // namespace magicbokeh
