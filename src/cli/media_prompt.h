// A prompt with images, videos and audio clips from the command line (`g4 forward --prompt --image
// --video --audio`, `g4 generate --prompt --image --audio`), made as transformers' Gemma4Processor
// makes it: the files decoded and processed (data::process_prompt_media, io/video_processor.h; the
// image budget from the model directory's processor config unless max_soft_tokens), each
// "<|image|>" / "<|video|>" / "<|audio|>" of the text expanded to its medium's soft tokens (a
// video's: each sampled frame's timestamp and soft tokens) and the text tokenised whole.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/gemma4.h"

namespace g4::cli {

struct MediaPromptOptions {
  std::string text;
  std::vector<std::string> images, audio;  // JPEG/PNG files; WAV files (any rate from 1 to 384 kHz)
  std::vector<std::string> videos;         // each "F1,F2,..." (frame files) or a folder of frames
  double video_fps = 0;                    // the frames' rate (0: unknown, 24 as transformers)
  int64_t video_frames = 0;                // frames sampled per video (0: the processor's num_frames)
  bool chat = false;  // one user turn of the Gemma 4 chat template (images, videos, clips, then the text)
  int64_t max_soft_tokens = 0;  // the image budget; 0: the processor config's
};

// --image, --audio and --max-soft-tokens into p, each needing `prompt` (the --prompt option); with
// `videos` also --video, --video-fps and --video-frames.
void add_media_options(CLI::App* cmd, MediaPromptOptions& p, CLI::Option* prompt, bool videos = false);

// input_ids and mm_token_type_ids [1, S] and the media tensors under transformers' names. Without
// chat the text is taken as it is (<bos> put first when missing; the placeholders of the media put
// before it when it has none of that kind). Prints each image's size and soft tokens. Errors name
// the file or the flag (--image, --video, --audio, --prompt).
model::ForwardInputs media_prompt_inputs(const model::Gemma4& m, const std::string& model_dir,
                                         const io::Tokenizer& tok, const MediaPromptOptions& p);

}  // namespace g4::cli
