"""operator/rectrain_operator"""
