"""Every evalkit video clip with what its MANIFEST says of it; shared by the tests that run all of them."""

# (clip under videos/, frames, upright width, height); counts are exact here, MANIFEST allows +-1.
EVALKIT_CLIPS = (
    ("surveillance/vtest_pets09_480x360.mp4", 795, 480, 360),
    ("surveillance/vtest_pets09_480x360_h264.avi", 795, 480, 360),
    ("traffic/car-detection.mp4", 377, 768, 432),
    ("traffic/car_traffic_small.mp4", 917, 640, 360),
    ("driving/solidWhiteRight.mp4", 221, 960, 540),
    ("edge_cases/fire2.mp4", 25, 1280, 720),
    ("edge_cases/no_duration.webm", 74, 1280, 720),
    ("edge_cases/video_with_failing_audio.mp4", 280, 640, 360),
    ("edge_cases/asl_again.mkv", 77, 640, 480),
    ("edge_cases/smpte-2997.mp4", 251, 1920, 1080),
)
CLIP_PATHS = tuple(clip for clip, *_ in EVALKIT_CLIPS)
