"""ReCo (Retrieve and Co-segment; Shin, Xie and Albanie, NeurIPS 2022) inside carbench (`model=reco`).

Training-free. Per concept: retrieve the k archive images a CLIP ranks highest for it (`index`,
`knn`); co-segment them with a dense backbone into one reference embedding (`coseg`, `dense`,
`references`, cached per concept / index / backbone); label a new image by the similarity of its
dense features to each reference (`segmenter`). `build` turns conf/model/reco.yaml into the parts.

What follows the authors' released code, and where carbench differs (the paper's own settings are
the same as the code's unless said):

- Archive and retrieval: ImageNet-1k train embedded by CLIP ViT-L/14@336px (short-side resize +
  centre crop); the concept's text embedding is the renormalised mean over prompt templates; the
  top k = 50 images by cosine are retrieved. The code uses 85 templates (the 80 ImageNet ones plus
  five "there is a … in the scene" ones); carbench offers the 80 (`retrieval_templates: imagenet80`)
  or any list. The code loads every embedding into GPU memory; carbench scans a memory-mapped fp16
  matrix in blocks, all of a run's concepts in one scan.
- Dense backbone: the released configs use DeiT-S/16 trained on Stylized ImageNet (one of the
  backbones the paper compares, with DINO ViT-S/16 and ViT-B/16); carbench defaults to DINO
  ViT-S/16 through timm (`vit_small_patch16_224.dino`, last-block patch tokens after the final
  norm) because it is the self-supervised one timm ships; any timm ViT is `dense_backbone=timm:NAME`.
  Reference images are 224×224 as in the code. The toy world has no self-supervised ViT, so it uses
  the toy CLIP's last-block patch tokens (`clip_tokens:toy`): a stand-in trained only contrastively.
- Seed pixels: for each pixel, its best (weighted) cosine match in each retrieved image, averaged
  over the images (its own image included, as in the code); the seed of an image is its argmax.
  The code slices the columns of image i as [i·hw, (2i+1)·hw), which for i > 0 spans several
  images; carbench takes exactly image i's columns (the paper's rule).
- Reference embedding: the mean of the seed features (unnormalised features averaged, then
  L2-normalised, as the code does); the code's alternatives (weighted, winner) are not offered.
- Language guidance ("text attention"): pixel weights sigmoid(10 · cos(dense CLIP pixel, text)).
  The code's dense CLIP is a MaskCLIP-style ResNet-50×16; carbench's CLIPs are ViTs, so it uses the
  MaskCLIP value path of the `text_clip` preset (ViT-B/16 by default; the toy CLIP on the toy world).
- Context elimination: not a per-image concept filter but a co-segmentation weight. The code first
  co-segments context concepts (tree, sky, building, road, person), then multiplies each pixel's
  weight by Π(1 − sigmoid(cos(pixel, context reference))) when co-segmenting the other concepts;
  a query that is itself a context concept uses its context reference. carbench does the same;
  `context_categories: null` uses the dataset's background queries as the context list.
- Inference: sigmoid(cos(pixel, reference)) upsampled bilinearly, times the language term
  (`dense_clip_inference`), argmax over concepts. ReCo has no background concept; on benchmarks
  with one, the dataset's background queries compete as concepts and their pixels become background
  (the harness's rule for every baseline).
- CRF: the code's CRF (10 iterations, Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3 compat 4)
  has the same parameters as `postprocess=crf` and, like it, gets the scores normalised over the
  concepts; carbench's adds CaR's background channel (1 − max over the queries) and, with
  `caffe_wrap=true`, CaR's mean-subtracted image (ReCo's feeds plain BGR: `postprocess.caffe_wrap=false`).
"""
