// Remembers the tensors whose contents a check has accepted, so that a check which must read device memory (a copy
// to the host: a synchronization) runs once per weight, not on every call. A tensor matches while it is the same
// view (data pointer, size, dtype) of the same, still living storage at the same version: the storage is held
// weakly, so a freed one never matches again whatever later reuses its memory, and an in-place write bumps the
// version. Inference tensors have no version counter, so they are never remembered (checked on every call).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Storage.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace spmm::ops {

class CheckedContents {
 public:
  bool contains(const at::Tensor& t) const {
    if (!rememberable(t)) return false;
    const std::lock_guard<std::mutex> lock(mutex_);
    return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.matches(t); });
  }

  void add(const at::Tensor& t) {
    if (!rememberable(t)) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [](const Entry& e) { return e.storage.expired(); }),
                   entries_.end());
    if (entries_.size() >= kMaxEntries) entries_.erase(entries_.begin());  // the oldest
    entries_.push_back(Entry{t.storage().getWeakStorageImpl(), t.data_ptr(), t.numel(), t.scalar_type(),
                             t.unsafeGetTensorImpl()->version_counter().current_version()});
  }

 private:
  static constexpr size_t kMaxEntries = 4096;  // a model's weights; beyond that the oldest is checked again

  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    const void* data;
    int64_t numel;
    at::ScalarType dtype;
    uint32_t version;
    bool matches(const at::Tensor& t) const {
      return !storage.expired() && storage._unsafe_get_target() == t.storage().unsafeGetStorageImpl() &&
             data == t.data_ptr() && numel == t.numel() && dtype == t.scalar_type() &&
             version == t.unsafeGetTensorImpl()->version_counter().current_version();
    }
  };

  static bool rememberable(const at::Tensor& t) { return t.has_storage() && !t.is_inference(); }

  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
};

}  // namespace spmm::ops
