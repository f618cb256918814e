"""Media files in and out, split by job: `images` (read, write, fit, resize), `video_in` (probe, read),
`video_out` (encode, add the sound) and `files` (the one atomic-output helper every writer uses)."""
