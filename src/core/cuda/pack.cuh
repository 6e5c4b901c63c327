// N elements of T loaded or stored as one aligned access (16 bytes for the widest packs): what the
// memory-bound kernels of every layer read and write with.
#pragma once
#include <type_traits>

namespace g4::cuda {

template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}
// load_pack past L1 (ld.global.cg): for data another CTA of the running kernel wrote.
template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack_cg(const T* p) {
  constexpr int kBytes = sizeof(T) * N;
  static_assert(kBytes == 16 || kBytes == 8 || kBytes == 4 || kBytes == 2, "pack size");
  using Word = std::conditional_t<kBytes == 16, uint4, std::conditional_t<kBytes == 8, uint2,
               std::conditional_t<kBytes == 4, unsigned, unsigned short>>>;
  const Word w = __ldcg(reinterpret_cast<const Word*>(p));
  Pack<T, N> v;
  __builtin_memcpy(&v, &w, kBytes);
  return v;
}
template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

}  // namespace g4::cuda
