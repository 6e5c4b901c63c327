// An fp32 master weight kept as its bf16 compute copy plus the 16 bits the copy leaves out (Transformer
// Engine FusedAdam's store_param_remainders): 4 bytes a parameter instead of 6. The copy is the
// master's top half, plus one when the low half read as a signed 16-bit remainder is negative (0x8000
// or more): rounding to nearest with ties away from zero, where a plain bf16 conversion rounds ties
// to even, so the two copies differ only on exact ties. Joining the two gives the master's bits back
// for every bit pattern (a NaN master's copy may not be a NaN; a run never keeps one, since a step
// with a non-finite gradient norm is never applied).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define G4_MASTER_BITS_FN __host__ __device__ __forceinline__
#else
#define G4_MASTER_BITS_FN inline
#endif

namespace g4::ops {

G4_MASTER_BITS_FN void split_master_bits(uint32_t master, uint16_t& param, int16_t& remainder) {
  param = static_cast<uint16_t>(master >> 16);
  remainder = static_cast<int16_t>(static_cast<uint16_t>(master & 0xffffu));
  if (remainder < 0) ++param;
}

G4_MASTER_BITS_FN uint32_t join_master_bits(uint16_t param, int16_t remainder) {
  if (remainder < 0) --param;
  return (static_cast<uint32_t>(param) << 16) | static_cast<uint16_t>(remainder);
}

}  // namespace g4::ops
