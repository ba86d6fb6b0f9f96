"""torch.hub entry points of paper_alexnet: the AlexNet of the 2012 paper, and the nets it is compared with.

    import torch
    net = torch.hub.load("PATH/TO/paper_alexnet", "alexnet", source="local")                  # untrained, §5 init
    net = torch.hub.load("PATH/TO/paper_alexnet", "alexnet", source="local", weights="shared/mine")
    net.classes, net.transform      # with weights: fc8's class names and the test-time pipeline

It runs from a plain checkout (torch.hub puts the repository's folder first on sys.path); nothing is fetched.
"""

dependencies = ["torch", "torchvision", "numpy", "PIL"]


def _net(variant, num_classes, weights, device, overrides):
    from paper_alexnet import build_model
    from paper_alexnet.shared import from_pretrained

    if weights is None:
        return build_model(
            variant or "paper", 1000 if num_classes is None else num_classes, **overrides
        ).to(device)
    net = from_pretrained(weights, device=device)
    held = net.meta["variant"]
    if (variant and variant != held) or (num_classes not in (None, len(net.classes))) or overrides:
        raise ValueError(
            f"weights={weights!r} hold a '{held}' net with {len(net.classes)} classes: leave variant, "
            "num_classes and the other settings out (or give these)"
        )
    return net


def alexnet(variant=None, num_classes=None, weights=None, device="cpu", **overrides):
    """AlexNet as §3.5 of the paper lays it out (variant "paper", the default: 96 kernels 11x11 stride 4 on a 227 crop,
    the §3.3 LRN, 3/2 pooling, the §3.2 towers as grouped convolutions, §5's initialisation), or any variant
    of paper_alexnet.list_variants() with its ablation switches ("paper+no-lrn", "caffe", "one-tower", ...).

    weights: a shared folder (python -m reproduce.export --out DIR), a checkpoint of this package, or published
    weights by name ("bvlc", "torchvision": downloaded once, checked, converted, cached); the net
    then comes in eval mode with .classes, .transform (net.transform.center(uint8 N x 3 x 256 x 256) is its
    input) and .meta (categories, transforms, parameters, multiply-adds, measured metrics).
    num_classes: fc8's outputs (default 1000). With weights, variant and num_classes are the weights' own.
    overrides: ArchConfig fields for an untrained net (lrn=False, dropout=0.0, input_size=224, ...).
    """
    return _net(variant, num_classes, weights, device, overrides)


def alexnet_torchvision(
    pretrained=False, num_classes=None, weights=None, device="cpu", **overrides
):
    """torchvision's AlexNet (the 2014 "one weird trick" net: 64-192-384-256-256, no LRN, no towers) built by
    this package, so that its layers carry the paper's names. pretrained=True: torchvision's ImageNet weights
    (AlexNet_Weights.IMAGENET1K_V1, downloaded once and checked: the name "torchvision"); weights as
    :func:`alexnet` takes them."""
    return _net(
        "torchvision", num_classes, "torchvision" if pretrained else weights, device, overrides
    )


def alexnet_caffe(num_classes=None, weights=None, device="cpu", pretrained=False, **overrides):
    """BVLC Caffe's bvlc_alexnet layout (Caffe's LRN: k = 1, alpha / n, across all maps). pretrained=True:
    BVLC's ImageNet weights, the paper's architecture trained (downloaded once, sha1-checked and converted:
    the name "bvlc"); weights as :func:`alexnet` takes them."""
    return _net("caffe", num_classes, "bvlc" if pretrained else weights, device, overrides)
