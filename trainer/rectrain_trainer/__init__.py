"""trainer/rectrain_trainer"""
