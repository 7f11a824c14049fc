"""sftbeam's DoFns and PTransforms, one concern a module.

For people who compose their own Beam pipelines; `sftbeam.pipeline.batch`
shows how the command line assembles them.
"""
