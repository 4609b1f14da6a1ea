#include "component_runner.h"

#include <sys/stat.h>

#include <sstream>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

namespace magicbokeh {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;

std::string shape_string(const std::vector<int32_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

static std::string error_text(Error error) {
  std::ostringstream out;
  out << executorch::runtime::to_string(error) << " (error 0x" << std::hex << static_cast<int>(error) << ")";
  return out.str();
}

struct ComponentRunner::Impl {
  std::unique_ptr<Module> module;
};

ComponentRunner::ComponentRunner(const std::string& path, const std::string& name)
    : impl_(new Impl), name_(name) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    throw RunnerError(RunnerErrorKind::kMissingFile, "component '" + name + "': program file " + path + " does not exist");
  }
  impl_->module = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  Error error = impl_->module->load();
  if (error != Error::Ok) {
    throw RunnerError(RunnerErrorKind::kLoadFailed, "component '" + name + "': cannot load " + path +
                                                        " as an ExecuTorch program: " + error_text(error));
  }
  error = impl_->module->load_method("forward");
  if (error != Error::Ok) {
    throw RunnerError(RunnerErrorKind::kLoadFailed,
                      "component '" + name + "': cannot load the forward method of " + path + ": " + error_text(error) +
                          " (a delegate or operator this runtime lacks?)");
  }
  auto meta = impl_->module->method_meta("forward");
  if (!meta.ok()) {
    throw RunnerError(RunnerErrorKind::kLoadFailed, "component '" + name + "': no method metadata: " + error_text(meta.error()));
  }
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tensor = meta->input_tensor_meta(i);
    if (!tensor.ok()) {
      throw RunnerError(RunnerErrorKind::kLoadFailed,
                        "component '" + name + "': input " + std::to_string(i) + " is not a tensor");
    }
    if (tensor->scalar_type() != ScalarType::Float) {
      throw RunnerError(RunnerErrorKind::kLoadFailed,
                        "component '" + name + "': input " + std::to_string(i) + " is not float32");
    }
    auto sizes = tensor->sizes();
    input_shapes_.emplace_back(sizes.begin(), sizes.end());
  }
}

ComponentRunner::~ComponentRunner() = default;

std::vector<float> ComponentRunner::run(const std::vector<const float*>& data, const std::vector<size_t>& lengths,
                                        const std::vector<std::vector<int32_t>>& shapes,
                                        std::vector<int32_t>* output_shape) {
  if (data.size() != input_shapes_.size()) {
    throw RunnerError(RunnerErrorKind::kBadInput, "component '" + name_ + "' takes " +
                                                      std::to_string(input_shapes_.size()) + " inputs, got " +
                                                      std::to_string(data.size()));
  }
  std::vector<TensorPtr> tensors;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < data.size(); ++i) {
    if (shapes[i] != input_shapes_[i]) {
      throw RunnerError(RunnerErrorKind::kBadInput, "component '" + name_ + "': input " + std::to_string(i) +
                                                        " has shape " + shape_string(shapes[i]) +
                                                        ", the program takes " + shape_string(input_shapes_[i]));
    }
    size_t count = 1;
    for (int32_t d : shapes[i]) count *= static_cast<size_t>(d);
    if (lengths[i] != count) {
      throw RunnerError(RunnerErrorKind::kBadInput, "component '" + name_ + "': input " + std::to_string(i) + " holds " +
                                                        std::to_string(lengths[i]) + " values, shape " +
                                                        shape_string(shapes[i]) + " needs " + std::to_string(count));
    }
    std::vector<executorch::aten::SizesType> sizes(shapes[i].begin(), shapes[i].end());
    // The runtime reads but never writes inputs; from_blob wraps the caller's buffer without a copy.
    tensors.push_back(executorch::extension::from_blob(const_cast<float*>(data[i]), sizes, ScalarType::Float));
    inputs.emplace_back(tensors.back());
  }
  auto result = impl_->module->forward(inputs);
  if (!result.ok()) {
    throw RunnerError(RunnerErrorKind::kRunFailed, "component '" + name_ + "': forward failed: " + error_text(result.error()));
  }
  if (result->empty() || !(*result)[0].isTensor()) {
    throw RunnerError(RunnerErrorKind::kRunFailed, "component '" + name_ + "': forward returned no tensor");
  }
  const auto& out = (*result)[0].toTensor();
  if (out.scalar_type() != ScalarType::Float) {
    throw RunnerError(RunnerErrorKind::kRunFailed, "component '" + name_ + "': output is not float32");
  }
  if (output_shape != nullptr) output_shape->assign(out.sizes().begin(), out.sizes().end());
  const float* begin = out.const_data_ptr<float>();
  return std::vector<float>(begin, begin + out.numel());
}

}  // namespace magicbokeh
