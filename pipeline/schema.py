"""Arrow schemas of every stage's Parquet output: the contracts between stages.

Conventions used everywhere:
- poses: ``w2c`` is a row-major 3x4 world-to-camera matrix (12 floats) in OpenCV axes
  (x right, y down, z forward), translation in the clip's *relative* scale;
- intrinsics are RealEstate10K-normalised ``[fx/W, fy/H, cx/W, cy/H]``;
- pixel coordinates follow COLMAP: the top-left pixel's centre is (0.5, 0.5), so the pixel
  with integer index (col, row) covers [col, col+1) x [row, row+1); (u, v) are always in the
  *original* image resolution (``width`` x ``height`` of the manifest);
- ``true_scale`` (when known) maps relative translations to metres: t_metric = t_rel * true_scale;
  a recovered frame/clip factor estimates exactly this number.
"""

from __future__ import annotations

import pyarrow as pa

# 2: observations gain tri_angle and unique (clip, frame, point) keys; align/curated gain the
#    scale uncertainty, raw and shrunk frame factors and the conditioning figures
# 3: align gains the intrinsics columns (scale_sigma_focal, scale_focal_sensitivity,
#    focal_consistency)
SCHEMA_VERSION = 3

MANIFEST = pa.schema(
    [
        ("clip_id", pa.string()),
        ("split", pa.string()),
        ("source_type", pa.string()),  # "video" | "images"
        ("video_path", pa.string()),  # absolute, null unless source_type == "video"
        ("frame_paths", pa.list_(pa.string())),  # absolute, per frame; empty for video
        ("depth_paths", pa.list_(pa.string())),  # per frame metric depth files; empty if none
        ("depth_unit", pa.float64()),  # metres per stored unit (0.001 for mm PNG, 1.0 for .npy)
        ("timestamps_us", pa.list_(pa.int64())),
        ("intrinsics", pa.list_(pa.float64(), 4)),  # normalised fx, fy, cx, cy
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int32()),
        ("w2c", pa.list_(pa.list_(pa.float64(), 12))),  # per frame, row-major 3x4
        ("true_scale", pa.float64()),  # null when unknown (real RealEstate10K)
        ("url", pa.string()),
    ]
)

OBSERVATIONS = pa.schema(
    [
        ("clip_id", pa.string()),
        ("frame_idx", pa.int32()),
        ("point_id", pa.int64()),
        ("u", pa.float32()),
        ("v", pa.float32()),
        ("z_cam", pa.float64()),  # camera-space depth of the 3D point, relative scale
        ("track_len", pa.int32()),
        ("reproj_err", pa.float32()),  # pixels, at the triangulation resolution
        ("tri_angle", pa.float32()),  # degrees: the point's largest angle between two rays
    ]
)

DEPTH_SAMPLES = pa.schema(
    [
        ("clip_id", pa.string()),
        ("frame_idx", pa.int32()),
        ("point_id", pa.int64()),
        ("depth", pa.float32()),  # metres; NaN where invalid
        ("valid", pa.bool_()),
    ]
)

# Added with the align/curate stages. Column definitions: pipeline/scale/factors.py and
# docs_curated_columns.md.
ALIGN = pa.schema(
    [
        ("clip_id", pa.string()),
        ("num_frames", pa.int32()),
        ("frame_scale", pa.list_(pa.float64())),  # per frame, shrunk; interpolated where flagged
        ("frame_scale_raw", pa.list_(pa.float64())),  # per frame median ratio; NaN if unmeasured
        ("frame_shrinkage", pa.list_(pa.float64())),  # 0 = own value kept .. 1 = clip factor
        ("frame_num_obs", pa.list_(pa.int32())),  # valid depth/point ratios per frame
        ("frame_spread", pa.list_(pa.float64())),  # MAD(ratios)/median; NaN if interpolated
        ("frame_interpolated", pa.list_(pa.bool_())),
        ("scale_max", pa.float64()),
        ("scale_min", pa.float64()),
        ("scale_median", pa.float64()),  # median over measured frames = clip_scale downstream
        ("scale_spread", pa.float64()),  # MAD(measured frame factors)/scale_median
        ("scale_range", pa.float64()),  # (scale_max - scale_min)/scale_median
        ("scale_sigma", pa.float64()),  # sd of log(scale_median): bootstrap (+) systematic
        ("scale_sigma_boot", pa.float64()),  # point-bootstrap part
        ("scale_sigma_sys", pa.float64()),  # conditioning part (ray error / tri. angle, floor)
        ("scale_sigma_frames", pa.float64()),  # frame-to-frame disagreement part
        ("scale_sigma_focal", pa.float64()),  # intrinsics part: |sensitivity| x focal prior
        ("scale_focal_sensitivity", pa.float64()),  # d log(scale) / d log(focal), poses fixed
        ("focal_consistency", pa.float64()),  # focal change best fitting the tracks (relative)
        ("frames_effective", pa.float64()),  # independent frames (AR(1) effective size)
        ("scale_ci_low", pa.float64()),  # 95% interval of the clip factor
        ("scale_ci_high", pa.float64()),
        ("scale_uncertainty", pa.float64()),  # exp(1.96 sigma) - 1: relative half-width
        ("frame_tau", pa.float64()),  # between-frame sd of log factors beyond sampling noise
        ("tri_angle_median", pa.float64()),  # degrees, over the points used
        ("ray_err_median", pa.float64()),  # radians: reprojection residual / focal length
        ("num_points", pa.int64()),  # 3D points with a valid ratio in a measured frame
        ("num_frames_measured", pa.int32()),
        ("num_obs_total", pa.int64()),  # observations of the clip before validity checks
        ("num_obs_valid", pa.int64()),  # with finite positive depth and z_cam, in range
    ]
)

CURATED = pa.schema(
    [
        ("clip_id", pa.string()),
        ("split", pa.string()),
        ("source_type", pa.string()),
        ("video_path", pa.string()),
        ("frame_paths", pa.list_(pa.string())),
        ("timestamps_us", pa.list_(pa.int64())),
        ("intrinsics", pa.list_(pa.float64(), 4)),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_frames", pa.int32()),
        ("w2c", pa.list_(pa.list_(pa.float64(), 12))),  # original, relative scale
        ("c2w_metric", pa.list_(pa.list_(pa.float64(), 16))),  # rel. to frame 0, metres
        ("frame_scale", pa.list_(pa.float64())),
        ("frame_scale_raw", pa.list_(pa.float64())),
        ("frame_shrinkage", pa.list_(pa.float64())),
        ("clip_scale", pa.float64()),
        ("frame_interpolated", pa.list_(pa.bool_())),
        ("frame_num_obs", pa.list_(pa.int32())),
        ("scale_max", pa.float64()),
        ("scale_min", pa.float64()),
        ("scale_spread", pa.float64()),
        ("scale_uncertainty", pa.float64()),
        ("scale_ci_low", pa.float64()),
        ("scale_ci_high", pa.float64()),
        ("tri_angle_median", pa.float64()),
        ("true_scale", pa.float64()),
    ]
)

# The RealCam-Vid-style export (curated/_compat/realcam_vid.parquet): one row per kept clip,
# what a camera-conditioned video model reads. docs/output_columns.md ("Compatibility export")
# documents it.
REALCAM_VID = pa.schema(
    [
        ("clip_id", pa.string()),  # the source clip (manifest/curated clip_id)
        ("split", pa.string()),
        ("num_frames", pa.int32()),
        ("w2c", pa.list_(pa.list_(pa.float64(), 16))),  # per frame 4x4 row-major, OpenCV axes,
        # world = frame 0's camera, metres: inverse of curated c2w_metric
        ("align_factor", pa.float64()),  # clip factor (curated clip_scale): t_metric / t_rel
        ("frame_scale", pa.list_(pa.float64())),  # per-frame factors (curated frame_scale)
        ("camera_scale", pa.float64()),  # metres: largest camera distance from frame 0
        ("intrinsics", pa.list_(pa.float64(), 4)),  # fx/W, fy/H, cx/W, cy/H
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
