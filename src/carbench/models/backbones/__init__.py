"""CLIP backbones: reading checkpoints safely, finding weights, the builder table, the ViT access
CaR needs, and the device/autocast helpers shared by every model.

One module per job; import from the module that owns a name (`backbones.registry.load_clip`,
`backbones.vit.ClipBackbone`, …). This package file re-exports nothing, so importing one job
never loads the others.
"""
