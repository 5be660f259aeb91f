"""DeiT III's "3-Augment" (``--ThreeAugment``): one of grayscale / solarization / blur per image, then color jitter."""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms


def three_augment_transform(args):
    """Training transform of DeiT III; ``--src`` (simple random crop) replaces RandomResizedCrop."""
    interpolation = transforms.InterpolationMode.BICUBIC
    if args.src:
        crop = [transforms.Resize(args.input_size, interpolation=interpolation),
                transforms.RandomCrop(args.input_size, padding=4, padding_mode="reflect")]
    else:
        crop = [transforms.RandomResizedCrop(args.input_size, scale=(0.08, 1.0), interpolation=interpolation)]
    choice = transforms.RandomChoice([transforms.RandomGrayscale(p=1.0),
                                      transforms.RandomSolarize(threshold=128, p=1.0),
                                      transforms.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0))])
    steps = crop + [transforms.RandomHorizontalFlip(), choice]
    if args.color_jitter:
        steps.append(transforms.ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter))
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return transforms.Compose(steps)
